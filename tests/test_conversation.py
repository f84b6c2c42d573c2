"""Conversation: what every generation leaves in the session, exact replay, and autosave."""

from __future__ import annotations

import pytest

from repl.conversation import Conversation
from repl.engine import GenerationStats, Notice
from repl.errors import TextgenError
from repl.params import SamplingParams
from repl.session import Session, load_session


def conversation(generator, tmp_path=None, **params) -> Conversation:
    session = Session(model={"spec": generator.info.spec, "name": generator.info.name},
                      params=SamplingParams(max_new_tokens=12, temperature=1.0, **params))
    return Conversation(session, generator, sessions_dir=tmp_path)


def consume(stream) -> tuple[str, list]:
    items = list(stream)
    return "".join(i for i in items if isinstance(i, str)), items


def test_every_completion_and_continuation_replays_exactly(tiny_generator):
    conv = conversation(tiny_generator)  # no seed: each one is drawn and recorded
    consume(conv.submit("Once upon a time"))
    consume(conv.regenerate())
    conv.select(0)
    consume(conv.continue_())
    turn = conv.session.turns[0]
    first, second = turn.completions
    assert first.seed != second.seed and first.text != second.text
    start = first.continuations[0].start
    assert tiny_generator.generate(conv.replay_request(0, 0))[0] == first.text[:start]
    assert tiny_generator.generate(conv.replay_request(0, 1))[0] == second.text
    replayed = tiny_generator.generate(conv.replay_continuation_request(0, 0, 0))[0]
    assert replayed == first.text[start:] and replayed


def test_fixed_seed_gives_distinct_but_reproducible_alternatives(tiny_generator):
    conv = conversation(tiny_generator, seed=10)
    consume(conv.submit("Hello"))
    consume(conv.regenerate())
    consume(conv.regenerate())
    turn = conv.last_turn
    assert [c.seed for c in turn.completions] == [10, 11, 12]
    assert [c.params.seed for c in turn.completions] == [10, 11, 12]
    assert turn.selected == 2 and len({c.text for c in turn.completions}) == 3
    conv.page(-1)
    assert turn.selected == 1


def test_cancel_keeps_and_saves_the_text_so_far(tiny_generator, tmp_path):
    conv = conversation(tiny_generator, tmp_path)
    conv.params = conv.params.replace(max_new_tokens=200)
    chunks = []
    for item in conv.submit("Stop me"):
        if isinstance(item, str):
            chunks.append(item)
            if len(chunks) == 3:
                conv.cancel()
    completion = conv.last_turn.completion
    assert completion.finish == "cancelled" and completion.text == "".join(chunks)
    assert completion.stats.new_tokens < 200
    saved = load_session(conv.path)
    assert saved.turns[0].completions[0].text == completion.text


def test_an_abandoned_stream_is_recorded_as_cancelled(tiny_generator, tmp_path):
    conv = conversation(tiny_generator, tmp_path)
    stream = conv.submit("Walk away")
    next(stream), next(stream)
    stream.close()
    assert conv.last_turn.completion.finish == "cancelled"
    assert load_session(conv.path).turns[0].completions[0].finish == "cancelled"
    assert not tiny_generator.busy


def test_a_failed_save_keeps_the_session_in_memory(tiny_generator, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    conv = conversation(tiny_generator, blocker / "sessions")
    _, items = consume(conv.submit("Keep me"))
    notices = [i.message for i in items if isinstance(i, Notice)]
    assert isinstance(items[-2], GenerationStats) and len(notices) == 1
    assert "could not save to" in notices[0] and "kept in memory" in notices[0]
    assert conv.save_error == notices[0] and conv.last_turn.completion.text
    conv.path = tmp_path / "elsewhere.json"  # what /save FILE does
    assert conv.save() is None and conv.save_error is None
    assert load_session(conv.path).turns[0].prompt == "Keep me"


def test_a_refused_request_leaves_no_empty_turn(tiny_generator, tmp_path):
    conv = conversation(tiny_generator, tmp_path)
    with pytest.raises(TextgenError, match="has no chat template"):
        consume(conv.submit("Hi", mode="chat"))
    assert conv.session.turns == [] and not list(tmp_path.iterdir())
    with pytest.raises(TextgenError, match="no alternative 3"):
        consume(conv.submit("Hi")) and conv.select(2)


@pytest.mark.slow
def test_chat_on_the_default_model_replays_exactly(default_loaded):
    from repl.engine import Generator

    generator = Generator(default_loaded)
    conv = conversation(generator)
    conv.params = conv.params.replace(max_new_tokens=8)
    conv.mode = "chat"
    consume(conv.submit("Name one colour."))
    consume(conv.submit("And another one?"))
    first_reply = conv.session.turns[0].completion.text
    consume(conv.regenerate(0))  # another reply for the earlier turn, on a new branch...
    assert len(conv.session.turns) == 1 and conv.session.turns[0].branch == 1
    conv.page(-1, 0)  # ...and paging back finds the turn that answered the first reply
    assert [t.prompt for t in conv.session.turns] == ["Name one colour.", "And another one?"]
    consume(conv.continue_(0))  # the first reply grows...
    request = conv.replay_request(1, 0)  # ...but the replay uses the text it was made with
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
    assert request.messages[1]["content"] == first_reply
    assert generator.generate(request)[0] == conv.session.turns[1].completion.text
