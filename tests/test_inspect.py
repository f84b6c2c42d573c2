"""Inspect mode: token probabilities from the generation itself, the token screen, forcing."""

from __future__ import annotations

import pytest
import torch

from repl.conversation import Conversation
from repl.engine import Backend, GenerationRequest, Generator
from repl.params import SamplingParams
from repl.session import Session, load_session
from repl.token_probs import TokenTrace, token_spans
from repl.tui.screens.inspect_view import InspectScreen
from tests.test_tui import SIZE, idle, make_app, submit, until

PLAIN = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def recompute(loaded, prompt_ids: list[int], new_ids: list[int]) -> torch.Tensor:
    """The model's logits for each generated position, from one forward pass (test only)."""
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prompt_ids + new_ids])).logits[0].float()
    return logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(new_ids)]


def check_trace(loaded, prompt: str, params: SamplingParams, temperature: float,
                top_k: int = 0, generator: Backend | None = None, rel: float = 2e-3,
                absolute: float = 1e-7) -> None:
    """The recorded probabilities are the model's softmax (at `temperature`, renormalised over
    the `top_k` best when given), recomputed here with one fp32 forward pass of `loaded`.
    `generator` (default: transformers on `loaded`) is the backend that generates."""
    generator = generator or Generator(loaded)
    trace = TokenTrace()
    request = GenerationRequest(prompt, params, trace=trace)
    text, stats = generator.generate(request)
    prompt_ids = generator.encode(request)[0]
    assert len(trace.steps) == stats.new_tokens
    assert len(trace.steps) > 3
    logits = recompute(loaded, prompt_ids, trace.ids)[: len(trace.steps)] / temperature
    if top_k:
        kth = logits.topk(top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    for row, step in zip(probs, trace.steps, strict=True):
        assert step.prob == pytest.approx(float(row[step.token_id]), rel=rel, abs=absolute)
        top = row.topk(10)
        assert list(step.top_probs) == pytest.approx(top.values.tolist(), rel=rel,
                                                     abs=absolute)
        if step.top_ids[0] != int(top.indices[0]):  # only a near tie may swap the best two
            assert float(row[step.top_ids[0]]) == pytest.approx(float(top.values[0]), rel=rel,
                                                                 abs=absolute)
        if top_k:
            assert sum(p > 0 for p in step.top_probs) == min(top_k, 10)
    spans = token_spans(loaded.tokenizer, trace.ids, text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)


def test_trace_is_the_models_own_distribution(tiny_loaded):
    check_trace(tiny_loaded, "The history of", SamplingParams(
        seed=11, max_new_tokens=16, **PLAIN), 1.0)


def test_trace_is_the_processed_distribution_it_was_sampled_from(tiny_loaded):
    params = SamplingParams(seed=4, max_new_tokens=16, **{**PLAIN, "temperature": 0.5,
                                                          "top_k": 5})
    check_trace(tiny_loaded, "Once upon", params, 0.5, top_k=5)


def test_inspect_does_not_change_what_is_sampled(tiny_loaded):
    generator = Generator(tiny_loaded)
    params = SamplingParams(seed=8, max_new_tokens=20, temperature=0.8, top_k=40, top_p=0.9,
                            min_p=0.01, repetition_penalty=1.2)
    plain, _ = generator.generate(GenerationRequest("Once upon", params))
    traced, _ = generator.generate(GenerationRequest("Once upon", params, trace=TokenTrace()))
    assert traced == plain


def test_trace_on_llama_cpp_is_the_processed_distribution(tiny_loaded, tiny_llama):
    """llama.cpp runs the tiny GPT-2 converted to q8_0: its recorded probabilities are the
    processed softmax of its own logits, within q8_0's error of the fp32 forward pass."""
    params = SamplingParams(seed=4, max_new_tokens=16, **{**PLAIN, "temperature": 0.5,
                                                          "top_k": 5})
    check_trace(tiny_loaded, "Once upon", params, 0.5, top_k=5, generator=tiny_llama,
                rel=0.0, absolute=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", "llama.cpp"])
def test_trace_on_the_default_model(default_loaded, default_llama, backend):
    """Exact on transformers; llama.cpp runs the Q4_1 weights with 8-bit activations, so its
    probabilities stay within 0.1 of the fp32 forward pass."""
    llama = backend == "llama.cpp"
    check_trace(default_loaded, "The capital of France is", SamplingParams(
        seed=3, max_new_tokens=12, **{**PLAIN, "temperature": 0.7, "top_k": 20}), 0.7,
        top_k=20, generator=default_llama if llama else None,
        **({"rel": 0.0, "absolute": 0.1} if llama else {}))


def test_inspect_off_records_nothing(tiny_loaded, tmp_path):
    conversation = Conversation(Session(model={"spec": "t", "name": "t"}, params=SamplingParams(
        seed=1, max_new_tokens=5)), Generator(tiny_loaded), sessions_dir=tmp_path)
    list(conversation.submit("hi"))
    assert conversation.session.turns[0].completion.traces == []


def test_forced_alternative_replays_exactly(tiny_loaded, tmp_path):
    generator = Generator(tiny_loaded)
    conversation = Conversation(Session(model={"spec": "t", "name": "t"}, params=SamplingParams(
        seed=5, max_new_tokens=10)), generator, sessions_dir=tmp_path)
    conversation.inspect = True
    list(conversation.submit("hello world"))
    source = conversation.session.turns[0].completion
    step = source.traces[0][1].steps[3]
    other = next(i for i in step.top_ids if i != step.token_id)
    items = list(conversation.force(-1, 0, 0, 3, other))
    turn = conversation.session.turns[0]
    forced = turn.completion
    assert len(turn.completions) == 2 and turn.selected == 1
    kept = source.traces[0][1].ids[:3]
    assert forced.forced.ids == [*kept, other] and forced.forced.source == 0
    prefix = tiny_loaded.tokenizer.decode([*kept, other])
    assert items[0] == prefix and forced.text.startswith(prefix)
    assert [s.token_id for s in forced.traces[0][1].steps][:4] == [*kept, other]
    saved = load_session(conversation.path).turns[0].completions[1]
    assert saved.forced == forced.forced and saved.text == forced.text
    replayed, _ = generator.generate(conversation.replay_request(0, 1))
    assert prefix + replayed == forced.text


@pytest.mark.anyio
async def test_f2_colours_tokens_and_f3_forces_an_alternative(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        assert app.conversation.inspect and "90%" in str(app.status.legend)
        await submit(pilot, app, "Once upon a time")
        turn = app.conversation.session.turns[0]
        steps = turn.completion.traces[0][1].steps
        assert len(steps) == turn.completion.stats.new_tokens
        rendered = app.transcript.last_view().render_turn()
        styles = {str(span.style) for span in rendered.spans}
        assert styles & {"$success", "$text", "$warning", "bold $error"}
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        screen = app.screen
        assert screen.query_one("#inspect-alts").row_count == 10  # a flat tiny model: all possible
        await pilot.press("right", "right", "down")
        assert screen.cursor == 2 and screen.row == 1
        chosen = screen.rows[1]
        kept_text = turn.completion.text[:screen.piece.start]
        await pilot.press("enter")
        await until(pilot, lambda: len(turn.completions) == 2)
        await idle(pilot, app)
        forced = turn.completion
        assert forced.forced.ids[-1] == chosen and forced.forced.start == 0
        assert forced.text.startswith(kept_text)
        assert load_session(app.conversation.path).turns[0].completions[1].forced is not None
        await pilot.press("f2")
        assert not app.conversation.inspect and app.status.legend == ""
        assert app.transcript.last_view().inspect_colours() is None


@pytest.mark.anyio
async def test_tokens_ruled_out_by_top_k_are_not_offered(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path, top_k=3, top_p=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await submit(pilot, app, "Once upon a time")
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        screen = app.screen
        assert len(screen.rows) == 3
        assert screen.query_one("#inspect-alts").row_count == 3
        assert "ruled out" in str(screen.query_one("#inspect-note").render())
        await pilot.press("down", "down", "down", "down")
        assert screen.row == 2


@pytest.mark.anyio
async def test_f3_without_probabilities_says_how(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await submit(pilot, app, "Hello")
        await pilot.press("f3")
        await pilot.pause()
        assert not isinstance(app.screen, InspectScreen)
        messages = [n.message for n in app._notifications]
        assert any("F2 turns inspect on" in m for m in messages)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_continuations_are_traced_and_can_be_forced(tiny_loaded, tmp_path):
    from repl.tui.screens.inspect_view import pieces

    generator = Generator(tiny_loaded)
    conversation = Conversation(Session(model={"spec": "t", "name": "t"}, params=SamplingParams(
        seed=2, max_new_tokens=6)), generator, sessions_dir=tmp_path)
    conversation.inspect = True
    list(conversation.submit("The harbour"))
    list(conversation.continue_())
    completion = conversation.session.turns[0].completion
    assert [start for start, _ in completion.traces] == [0, completion.continuations[0].start]
    parts = pieces(completion, tiny_loaded.tokenizer)
    assert len(parts) == 12 and parts[-1].end == len(completion.text)
    assert "".join(completion.text[p.start:p.end] for p in parts) == completion.text
    step = completion.traces[1][1].steps[2]
    other = next(i for i in step.top_ids if i != step.token_id)
    list(conversation.force(-1, 0, 1, 2, other))
    forced = conversation.session.turns[0].completion
    start = completion.continuations[0].start
    assert forced.text.startswith(completion.text[:start]) and forced.forced.start == start
    replayed, _ = generator.generate(conversation.replay_request(0, 1))
    assert forced.text.endswith(replayed) and replayed
