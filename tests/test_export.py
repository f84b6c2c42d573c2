"""Markdown and JSONL export, and `textgen export`, `textgen sessions list|search`."""

from __future__ import annotations

import json

from markdown_it import MarkdownIt

from repl.cli import main
from repl.export import to_jsonl, to_markdown
from repl.session import save_session, session_filename
from tests.session_factories import sample_session


def test_markdown_reads_as_a_transcript_with_parameters_per_completion():
    md = to_markdown(sample_session())
    tokens = MarkdownIt().parse(md)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [
        "It",
        "Turn 1 · completion", "Alternative 1 of 2", "Alternative 2 of 2 · selected",
        "Turn 2 · chat", "Completion",
    ]  # the model's "# Not a heading" stays text
    blocks = [t.content for t in tokens if t.type == "fence"]
    session = sample_session()
    assert blocks == [
        "It\n",
        session.turns[0].completions[0].text + "\n",
        session.turns[0].completions[1].text + "\n",
        "How do I *print* in Python?\n",
        session.turns[1].completions[0].text + "\n",
    ]
    assert "- **Model** SmolLM2-135M-Instruct (`default`)" in md
    assert ("temperature 0.8 · top_k 50 · top_p 0.9 · repetition_penalty 1.1 · "
            "max_new_tokens 12 · 12 tokens · 120.5 tok/s · seed 41 · finish length") in md
    assert ('continued (1) from character 27: greedy · repetition_penalty 1 · '
            'max_new_tokens 200 · stop "\\n\\n" · 8 tokens · seed 5 · finish eos') in md
    assert "seed 42 · finish cancelled" in md and "model `models/other`" in md


def test_jsonl_has_one_record_per_completion():
    records = [json.loads(line) for line in to_jsonl(sample_session()).splitlines()]
    assert [(r["turn"], r["alternative"], r["selected"]) for r in records] == [
        (1, 1, False), (1, 2, True), (2, 1, True)]
    first = records[0]
    assert first["prompt"] == "It" and first["completion"].startswith(" was a rainy day")
    assert first["finish"] == "eos"  # where the text ends now: after its continuation
    assert first["params"]["temperature"] == 0.8 and first["seed"] == 41
    assert first["continuations"][0]["start"] == 27 and "messages" not in first
    assert records[2]["messages"] == [{"role": "user", "content": "How do I *print* in Python?"}]
    assert records[2]["stats"] is None and records[2]["model"] == "models/other"


def test_export_command_writes_the_file(tmp_path, capsys):
    path = tmp_path / "s.json"
    save_session(sample_session(), path)
    assert main(["export", str(path), "--format", "jsonl", "-o", str(tmp_path / "out.jsonl")]) == 0
    assert (tmp_path / "out.jsonl").read_text("utf-8") == to_jsonl(sample_session())
    assert main(["export", str(path)]) == 0
    assert capsys.readouterr().out == to_markdown(sample_session())


def test_sessions_list_and_search(tmp_path, capsys):
    session = sample_session()
    save_session(session, tmp_path / session_filename(session))
    (tmp_path / "broken.json").write_text('{"format": "textgen-session"')
    (tmp_path / ".s.json.123.tmp").write_text("half a save")
    assert main(["sessions", "list", "--sessions-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == ("20261123-100000-it-abc1.json  2026-11-23 10:00  2 turns/3 completions  "
                   "SmolLM2-135M-Instruct  It\n")
    assert "skipped" in err and "broken.json: truncated" in err

    assert main(["--sessions-dir", str(tmp_path), "sessions", "search", "PARIS", "rainy"]) == 0
    out = capsys.readouterr().out
    assert out == ("20261123-100000-it-abc1.json  turn 1 (alternative 1): was a rainy day in "
                   "Paris, and then the sun came out.\n")
    assert main(["sessions", "search", "print", "--sessions-dir", str(tmp_path)]) == 0
    assert "turn 2 (prompt): How do I *print* in Python?" in capsys.readouterr().out
    assert main(["sessions", "search", "rainy", "times", "--sessions-dir", str(tmp_path)]) == 0
    assert "turn 1" in capsys.readouterr().out  # words may be in different alternatives
    assert main(["sessions", "search", "nowhere", "--sessions-dir", str(tmp_path)]) == 1
    assert "no turns match 'nowhere'" in capsys.readouterr().err


def test_comparisons_and_forced_alternatives_are_exported():
    from tests.session_factories import sample_session_v2

    session = sample_session_v2()
    md = to_markdown(session)
    assert "## Turn 3 · completion · comparison" in md
    assert "### Side A" in md and "### Side B" in md and "Alternative 1 of 2" not in md
    assert ('<sub>branched from alternative 2 at character 8, forcing the token " worst"</sub>'
            in md)
    records = [json.loads(line) for line in to_jsonl(session).splitlines()]
    assert records[2]["forced"] == {"start": 8, "ids": [373, 262, 5290], "token": " worst",
                                    "source": 1}
    assert [r.get("compare", False) for r in records] == [False] * 4 + [True, True, False]
    assert records[4]["model"] == "default" and records[5]["model"] == "models/other"


def test_export_writes_the_branch_shown_or_every_branch(tmp_path, capsys):
    from tests.session_factories import sample_session_v3

    session = sample_session_v3()
    path = tmp_path / "tree.json"
    save_session(session, path)
    assert main(["export", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "How do I *print* in Python?" in shown and "Rust" not in shown
    assert "- **Branches** 2 (this is the one shown; `--all-branches` writes all)" in shown

    assert main(["export", str(path), "--all-branches"]) == 0
    every = capsys.readouterr().out
    tokens = MarkdownIt().parse(every)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert [h for h in headings if h.startswith(("Branch", "Turn"))] == [
        "Branch 1 of 2 · shown", "Turn 1 · completion", "Turn 2 · chat",
        "Turn 3 · completion · comparison", "Turn 4 · chat",
        "Branch 2 of 2", "Turn 1 · completion", "Turn 2 · chat", "Turn 3 · chat"]
    assert "How do I print in Rust?" in every

    assert main(["export", str(path), "--format", "jsonl", "--all-branches"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Each turn once: turn 1 is shared, so only branch 1 writes it.
    assert [(r["branch"], r["turn"], r["prompt"]) for r in records if r["alternative"] == 1] == [
        (1, 1, "It"), (1, 2, "How do I *print* in Python?"), (1, 3, "Compare"),
        (1, 4, "Shorter?"), (2, 2, "How do I print in Rust?"), (2, 3, "Shorter?")]
    assert records[-1]["messages"] == [  # the context along its own branch
        {"role": "user", "content": "How do I print in Rust?"},
        {"role": "assistant", "content": 'println!("1");'},
        {"role": "user", "content": "Shorter?"}]
    plain = to_jsonl(session)
    assert "Rust" not in plain and '"branch"' not in plain


def test_sessions_list_and_search_see_every_branch(tmp_path, capsys):
    from tests.session_factories import sample_session_v3

    session = sample_session_v3()
    save_session(session, tmp_path / session_filename(session))
    assert main(["sessions", "list", "--sessions-dir", str(tmp_path)]) == 0
    assert "4 turns/7 completions/2 branches" in capsys.readouterr().out
    assert main(["sessions", "search", "rust", "--sessions-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith(
        "turn 2 of branch 2 (prompt): How do I print in Rust?\n")
