"""The conversation is a tree: edit an earlier prompt, regenerate an earlier turn, page and switch
between branches; every branch is kept, saved and reopened as it was."""

from __future__ import annotations

import pytest

from repl.conversation import Conversation
from repl.errors import TextgenError
from repl.session import Session, load_session


def consume(stream) -> None:
    for _ in stream:
        pass


def prompts(conv: Conversation) -> list[str]:
    return [t.prompt for t in conv.session.turns]


@pytest.fixture
def chat(scripted, tmp_path) -> Conversation:
    """A chat of three turns (A, B, C) with a system prompt, saved under tmp_path."""
    conv = Conversation(Session(model={"spec": "scripted", "name": "scripted"}), scripted(),
                        sessions_dir=tmp_path, mode="chat")
    conv.system = "Be brief."
    conv.params = conv.params.replace(seed=40)
    for text in "ABC":
        consume(conv.submit(text))
    return conv


def test_editing_a_prompt_branches_and_keeps_the_old_branch(chat):
    generator = chat.generator
    consume(chat.edit(1, "B2"))
    assert prompts(chat) == ["A", "B2"]  # C answered B: it stays with the old branch
    messages = generator.requests[-1].messages
    assert [m["content"] for m in messages] == ["Be brief.", "A", "Hello world.", "B2"]
    turn = chat.session.turns[1]
    assert (turn.branch, turn.branch_count) == (1, 2)
    chat.page(-1, 1)  # back to the old branch: its turns come back
    assert prompts(chat) == ["A", "B", "C"]
    assert chat.session.turns[1].branch == 0
    chat.page(1, 1)  # and forward again
    assert prompts(chat) == ["A", "B2"]
    chat.page(1, 1)  # the end: paging stops there
    assert prompts(chat) == ["A", "B2"]
    consume(chat.submit("D"))  # a new turn goes on the branch shown
    assert prompts(chat) == ["A", "B2", "D"]
    assert [[t.prompt for t in b.turns] for b in chat.session.branches()] == [
        ["A", "B", "C"], ["A", "B2", "D"]]


def test_paging_goes_through_the_alternatives_then_the_branches(chat):
    consume(chat.regenerate())  # C gets a second alternative in place: nothing depends on it
    assert len(chat.session.turns[2].completions) == 2
    consume(chat.edit(2, "C2"))
    seen = []
    for _ in range(4):
        chat.page(-1, 2)
        turn = chat.session.turns[2]
        seen.append((turn.prompt, turn.selected))
    assert seen == [("C", 1), ("C", 0), ("C", 0), ("C", 0)]
    chat.page(1, 2), chat.page(1, 2)
    assert (chat.session.turns[2].prompt, chat.session.turns[2].selected) == ("C2", 0)


def test_regenerating_an_earlier_chat_turn_branches_and_the_seed_keeps_counting(chat):
    consume(chat.regenerate(0))  # B and C answered A's first reply: a new branch for turn 1
    assert prompts(chat) == ["A"]
    turn = chat.session.turns[0]
    assert (turn.branch, turn.branch_count, len(turn.completions)) == (1, 2, 1)
    assert turn.completions[0].seed == 41  # 40 was the first alternative at this position
    chat.page(-1, 0)
    assert prompts(chat) == ["A", "B", "C"]


def test_regenerating_an_earlier_completion_turn_adds_an_alternative(scripted, tmp_path):
    conv = Conversation(Session(model={"spec": "scripted", "name": "scripted"}), scripted(),
                        sessions_dir=tmp_path)
    consume(conv.submit("one"))
    consume(conv.submit("two"))
    consume(conv.regenerate(0))  # turn 2 does not depend on turn 1 in complete mode
    assert prompts(conv) == ["one", "two"]
    assert len(conv.session.turns[0].completions) == 2 and not conv.session.turns[0].branches


def test_a_refused_edit_leaves_the_session_as_it_was(scripted, tmp_path):
    conv = Conversation(Session(model={"spec": "scripted", "name": "scripted"}),
                        scripted(chat=False), sessions_dir=tmp_path)
    consume(conv.submit("one"))
    consume(conv.submit("two"))
    before = Session.from_dict(conv.session.to_dict())
    conv.session.turns[0].mode = before.turns[0].mode = "chat"  # the model cannot chat
    with pytest.raises(TextgenError, match="no chat template"):
        consume(conv.edit(0, "uno"))
    assert conv.session == before
    with pytest.raises(TextgenError, match="there is no turn 5"):
        conv.edit(4, "x")


def test_the_tree_is_saved_and_reopened_as_it_was(chat):
    consume(chat.edit(1, "B2"))
    consume(chat.regenerate(0))
    chat.page(-1, 0)  # shown: A, B2
    assert prompts(chat) == ["A", "B2"]
    reopened = load_session(chat.path)
    assert reopened == chat.session
    assert [[t.prompt for t in b.turns] for b in reopened.branches()] == [
        ["A", "B", "C"], ["A", "B2"], ["A"]]
    assert [b.current for b in reopened.branches()] == [False, True, False]
    assert reopened.extra["system"] == "Be brief."


def test_switch_to_a_whole_branch_by_number(chat):
    consume(chat.edit(1, "B2"))
    consume(chat.edit(0, "A2"))
    assert [[t.prompt for t in b.turns] for b in chat.session.branches()] == [
        ["A", "B", "C"], ["A", "B2"], ["A2"]]
    chat.switch_to(1)
    assert prompts(chat) == ["A", "B", "C"]
    chat.switch_to(2)
    assert prompts(chat) == ["A", "B2"]
    assert load_session(chat.path).turns[1].prompt == "B2"  # switching saves
    with pytest.raises(TextgenError, match="there is no branch 4; this session has 3"):
        chat.switch_to(4)


def test_an_edited_reply_is_a_new_alternative_or_branch_and_cannot_be_replayed(chat):
    completion = chat.edit_reply(2, "By hand.")  # the last turn: in place
    turn = chat.session.turns[2]
    assert turn.completions[1] is completion and turn.selected == 1
    assert completion.finish == "edited" and completion.stats is None
    with pytest.raises(TextgenError, match="written by hand"):
        chat.replay_request(2, 1)
    chat.edit_reply(0, "Changed.")  # B and C answered A's old reply: a new branch
    assert prompts(chat) == ["A"] and chat.session.turns[0].branch_count == 2
    consume(chat.submit("D"))
    messages = chat.generator.requests[-1].messages
    assert [m["content"] for m in messages] == ["Be brief.", "A", "Changed.", "D"]
    assert load_session(chat.path) == chat.session


def test_plain_repl_edit_reply_and_branch_commands(chat, tmp_path, capsys):
    import io

    from repl.plain import PlainRepl

    out = io.StringIO()
    repl = PlainRepl(chat, tmp_path, interactive=False, out=out)
    repl.handle("/edit 2 B2")
    repl.handle("/reply 1 By hand.")
    repl.handle("/branch")
    repl.handle("/edit two X")
    repl.handle("/branch 9")
    err = capsys.readouterr().err
    assert "[turn 2 is now branch 2/2; /branch lists them]" in err
    assert "[turn 1: alternative 1/1, written by hand on branch 2/2]" in err
    assert "usage: /edit N TEXT" in err and "there is no branch 9; this session has 3" in err
    assert out.getvalue().endswith("  1: A → B → C\n  2: A → B2\n* 3: A\n")
    repl.handle("/branch 2")
    assert prompts(chat) == ["A", "B2"]
    assert "[branch 2/3: 2 turns]" in capsys.readouterr().err
