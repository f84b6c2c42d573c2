"""Sessions for tests: a realistic hand-made one, and hypothesis strategies for any valid one."""

from __future__ import annotations

from datetime import UTC

from hypothesis import strategies as st

from repl.engine import GenerationStats
from repl.params import SamplingParams
from repl.session import FINISH_REASONS, Completion, Continuation, Forced, Session, Turn

# Any text, lone surrogates included (a badly decoded terminal can produce them).
any_text = st.text(alphabet=st.characters(), max_size=40)

params_strategy = st.builds(
    SamplingParams,
    max_new_tokens=st.integers(1, 100_000),
    temperature=st.just(0.0) | st.floats(0.01, 100),
    top_k=st.integers(0, 10_000),
    top_p=st.floats(0, 1, exclude_min=True),
    min_p=st.floats(0, 1, exclude_max=True),
    repetition_penalty=st.floats(0.05, 20),
    no_repeat_ngram_size=st.integers(0, 20),
    do_sample=st.booleans(),
    seed=st.none() | st.integers(0, 2**32 - 1),
    stop=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
)

stats_strategy = st.none() | st.builds(
    GenerationStats,
    prompt_tokens=st.integers(0, 10**6),
    new_tokens=st.integers(0, 10**6),
    ttft_s=st.none() | st.floats(0, 1e4),
    tokens_per_s=st.none() | st.floats(0, 1e6),
    total_s=st.floats(0, 1e6),
    finish_reason=st.sampled_from(FINISH_REASONS),
    seed=st.integers(0, 2**32 - 1),
    trimmed_tokens=st.integers(0, 10**6),
)

dates = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat(timespec="seconds"))
finishes = st.sampled_from(FINISH_REASONS)


@st.composite
def completions(draw: st.DrawFn) -> Completion:
    text = draw(any_text)
    starts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
    continuations = [
        Continuation(start=start, params=draw(params_strategy), seed=draw(st.integers(0, 2**32)),
                     stats=draw(stats_strategy), finish=draw(finishes), created=draw(dates))
        for start in starts
    ]
    forced = draw(st.none() | st.builds(
        Forced, start=st.integers(0, len(text)), ids=st.lists(st.integers(0, 200_000), min_size=1,
                                                              max_size=5),
        token=any_text, source=st.integers(0, 5)))
    return Completion(text=text, params=draw(params_strategy), seed=draw(st.integers(0, 2**32)),
                      stats=draw(stats_strategy), finish=draw(finishes), model=draw(any_text),
                      created=draw(dates), continuations=continuations, forced=forced)


@st.composite
def turns(draw: st.DrawFn) -> Turn:
    compare = draw(st.booleans())  # a comparison: its two sides (one, if the other failed)
    alternatives = draw(st.lists(completions(), min_size=1 if compare else 0,
                                 max_size=2 if compare else 3))
    selected = draw(st.integers(0, len(alternatives) - 1)) if alternatives else 0
    return Turn(mode=draw(st.sampled_from(["complete", "chat"])), prompt=draw(any_text),
                completions=alternatives, selected=selected, compare=compare)


@st.composite
def lines(draw: st.DrawFn, depth: int = 0, min_size: int = 0) -> list[Turn]:
    """A line of turns whose turns may hold branches (other lines, nested up to depth 2);
    a put-aside line's first turn holds none (see repl/session.py)."""
    line = draw(st.lists(turns(), min_size=min_size, max_size=3))
    for position, turn in enumerate(line):
        if depth < 2 and (depth == 0 or position > 0):
            turn.branches = draw(st.lists(lines(depth + 1, min_size=1), max_size=2))
            turn.branch = draw(st.integers(0, len(turn.branches)))
    return line


sessions = st.builds(
    Session,
    model=st.fixed_dictionaries({"spec": any_text, "name": any_text}),
    params=params_strategy,
    turns=lines(),
    id=st.text(min_size=1, max_size=16),
    created=dates,
)


def stats(new_tokens: int = 12, finish: str = "length", seed: int = 7) -> GenerationStats:
    return GenerationStats(prompt_tokens=5, new_tokens=new_tokens, ttft_s=0.02,
                           tokens_per_s=120.5, total_s=0.12, finish_reason=finish, seed=seed)


def sample_session() -> Session:
    """Two turns: a completion turn with two alternatives (the second selected, the first
    continued once) and a chat turn whose reply contains Markdown and a code fence."""
    sampled = SamplingParams(temperature=0.8, seed=41, max_new_tokens=12)
    greedy = SamplingParams(do_sample=False, temperature=0.0, repetition_penalty=1.0, seed=5,
                            stop=("\n\n",))
    first = Completion(
        text=" was a rainy day in Paris, and then the sun came out.",
        params=sampled, seed=41, stats=stats(seed=41), finish="length", model="default",
        created="2026-11-23T10:00:01+00:00",
        continuations=[Continuation(start=27, params=greedy, seed=5,
                                    stats=stats(new_tokens=8, finish="eos", seed=5),
                                    finish="eos", created="2026-11-23T10:00:05+00:00")],
    )
    second = Completion(
        text=" was the best of times.", params=sampled.replace(seed=42), seed=42,
        stats=stats(finish="cancelled", seed=42), finish="cancelled", model="default",
        created="2026-11-23T10:00:03+00:00",
    )
    reply = Completion(
        text="# Not a heading\nUse ```code``` like this:\n```\nprint(1)\n```",
        params=greedy, seed=5, stats=None, finish="error", model="models/other",
        created="2026-11-23T10:01:00+00:00",
    )
    return Session(
        model={"spec": "default", "name": "SmolLM2-135M-Instruct"},
        params=sampled, id="abc123def456", created="2026-11-23T10:00:00+00:00",
        turns=[
            Turn(mode="complete", prompt="It", completions=[first, second], selected=1),
            Turn(mode="chat", prompt="How do I *print* in Python?", completions=[reply]),
        ],
    )


def sample_session_v2() -> Session:
    """The sample plus what version 2 added: a comparison turn and a forced alternative."""
    session = sample_session()
    base = session.turns[0].completions[1]
    session.turns[0].completions.append(Completion(
        text=" was the worst of times.", params=base.params, seed=43, stats=stats(seed=43),
        finish="length", model="default", created="2026-11-23T10:00:04+00:00",
        forced=Forced(start=8, ids=[373, 262, 5290], token=" worst", source=1)))
    session.turns.append(Turn(mode="complete", prompt="Compare", compare=True, completions=[
        Completion(text=" left side", params=base.params, seed=9, stats=stats(seed=9),
                   finish="length", model="default", created="2026-11-23T10:02:00+00:00"),
        Completion(text=" right side", params=base.params.replace(temperature=0.2), seed=9,
                   stats=stats(seed=9), finish="eos", model="models/other",
                   created="2026-11-23T10:02:01+00:00"),
    ]))
    # A chat turn that records the context it was made with: turn 2's reply, first 10 characters.
    session.turns.append(Turn(mode="chat", prompt="Shorter?", completions=[Completion(
        text="print(1)", params=base.params, seed=3, stats=stats(seed=3), finish="eos",
        model="default", created="2026-11-23T10:03:00+00:00", history=[(1, 0, 10)],
        continuations=[Continuation(start=5, params=base.params, seed=4, stats=None,
                                    finish="eos", created="2026-11-23T10:03:05+00:00",
                                    history=[(1, 0, 10)])])]))
    return session


def sample_session_v3() -> Session:
    """The version 2 sample plus what version 3 added: turn 2 was edited, so its position holds
    two lines; the shown one is the first, the other is a different question and a follow-up
    whose recorded context is that line's own reply."""
    session = sample_session_v2()
    params = session.turns[0].completions[0].params
    rust = Completion(text="println!(\"1\");", params=params, seed=11, stats=stats(seed=11),
                      finish="eos", model="default", created="2026-11-23T10:04:00+00:00",
                      history=[])
    follow = Completion(text="print!", params=params, seed=12, stats=None, finish="stop",
                        model="default", created="2026-11-23T10:04:30+00:00",
                        history=[(1, 0, 5)])
    shown = session.turns[1]
    shown.branches = [[Turn(mode="chat", prompt="How do I print in Rust?", completions=[rust]),
                       Turn(mode="chat", prompt="Shorter?", completions=[follow])]]
    shown.branch = 0
    return session
