"""Sessions out of textgen: a readable Markdown transcript, or JSONL records for datasets.

`textgen export FILE --format md|jsonl [-o OUT]` prints to stdout or writes OUT atomically. A
session is a tree (repl/session.py): the branch shown when it was saved is what is written,
every branch with `--all-branches`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from repl.params import SamplingParams
from repl.safe_text import for_stream
from repl.session import (
    Completion,
    Session,
    Turn,
    atomic_write,
    chat_messages,
    load_session,
)

FORMATS = ("md", "jsonl")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a saved session as Markdown or JSONL",
        description="Print a saved session as a Markdown transcript (every alternative, with "
                    "the parameters of each) or as JSONL, one record per completion.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="a session file (.json)")
    parser.add_argument("--format", "-f", choices=FORMATS, default="md",
                        help="md (default) or jsonl")
    parser.add_argument("--output", "-o", type=Path, metavar="OUT",
                        help="write here instead of stdout")
    parser.add_argument("--all-branches", action="store_true",
                        help="every branch of the conversation (md: each one whole; jsonl: "
                             "each turn once, with its branch number), not only the one shown")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    session = load_session(args.file)
    text = export(session, args.format, all_branches=args.all_branches)
    if args.output is None:
        # A terminal shows control sequences from the transcript; a pipe gets the exact text.
        sys.stdout.write(for_stream(text, sys.stdout))
        return 0
    atomic_write(args.output, text.encode("utf-8"))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def export(session: Session, fmt: str, *, all_branches: bool = False) -> str:
    """The session as `md` or `jsonl` text, always encodable as UTF-8: the branch shown, or
    every branch."""
    if fmt == "md":
        text = to_markdown(session, all_branches=all_branches)
    elif fmt == "jsonl":
        text = to_jsonl(session, all_branches=all_branches)
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose md or jsonl.")
    # A lone surrogate (a badly decoded terminal byte) would make the write fail.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- Markdown ------------------------------------------------------------------------------------

def to_markdown(session: Session, *, all_branches: bool = False) -> str:
    """The transcript: each prompt, every alternative (the selected one marked) and how each
    was made. Texts go in fenced blocks, so model output cannot break the layout. With
    `all_branches`, every branch follows, each one whole."""
    model = session.model.get("name") or session.model.get("spec", "?")
    branches = session.branches()
    lines = [
        f"# {_inline(session.title)}",
        "",
        f"- **Session** `{session.id}`, started {_date(session.created)}",
        f"- **Model** {_inline(model)} (`{session.model.get('spec', '?')}`)",
        f"- **Turns** {len(session.turns)}",
    ]
    if len(branches) > 1:
        lines.append(f"- **Branches** {len(branches)}" + (
            "" if all_branches else " (this is the one shown; `--all-branches` writes all)"))
    lines.append("")
    if not all_branches:
        lines += _turns_markdown(session.turns, "##")
    else:
        for number, branch in enumerate(branches, 1):
            shown = " · shown" if branch.current else ""
            lines += [f"## Branch {number} of {len(branches)}{shown}", ""]
            lines += _turns_markdown(branch.turns, "###")
    return "\n".join(lines).rstrip("\n") + "\n"


def _turns_markdown(turns: list[Turn], heading: str) -> list[str]:
    lines: list[str] = []
    for number, turn in enumerate(turns, 1):
        kind = "chat" if turn.mode == "chat" else "completion"
        lines += [f"{heading} Turn {number} · {kind}{' · comparison' if turn.compare else ''}",
                  ""]
        lines += ["**Prompt**", "", *_fenced(turn.prompt), ""]
        if not turn.completions:
            lines += ["*(no completion yet)*", ""]
        count = len(turn.completions)
        for index, completion in enumerate(turn.completions):
            if turn.compare:  # two ways of running one prompt, side by side
                title, mark = f"Side {'AB'[index] if index < 2 else index + 1}", ""
            else:
                mark = " · selected" if index == turn.selected and count > 1 else ""
                title = "Completion" if count == 1 else f"Alternative {index + 1} of {count}"
            lines += [f"{heading}# {title}{mark}", ""]
            lines += [*_fenced(completion.text), ""]
            lines += [_made_with(completion), ""]
    return lines


def describe_params(params: SamplingParams) -> str:
    """One line a person reads: the decoding method and every knob that matters for it."""
    if params.greedy:
        parts = ["greedy"]
    else:
        parts = [f"temperature {params.temperature:g}", f"top_k {params.top_k}",
                 f"top_p {params.top_p:g}"]
        if params.min_p:
            parts.append(f"min_p {params.min_p:g}")
    parts.append(f"repetition_penalty {params.repetition_penalty:g}")
    if params.no_repeat_ngram_size:
        parts.append(f"no_repeat_ngram_size {params.no_repeat_ngram_size}")
    parts.append(f"max_new_tokens {params.max_new_tokens}")
    if params.stop:
        parts.append("stop " + ", ".join(json.dumps(s, ensure_ascii=False) for s in params.stop))
    return " · ".join(parts)


def _made_with(completion: Completion) -> str:
    stats = completion.stats
    facts = [f"seed {completion.seed}", f"finish {completion.finish}"]
    if stats is not None:
        facts.insert(0, f"{stats.new_tokens} tokens")
        if stats.tokens_per_s:
            facts.insert(1, f"{stats.tokens_per_s:.1f} tok/s")
    line = (f"<sub>{describe_params(completion.params)} · {' · '.join(facts)} · "
            f"model `{completion.model}` · {_date(completion.created)}</sub>")
    if (forced := completion.forced) is not None:
        line += (f"  \n<sub>branched from alternative {forced.source + 1} at character "
                 f"{forced.start}, forcing the token {json.dumps(forced.token, ensure_ascii=False)}"
                 "</sub>")
    for number, k in enumerate(completion.continuations, 1):
        tokens = f"{k.stats.new_tokens} tokens · " if k.stats is not None else ""
        line += (f"  \n<sub>continued ({number}) from character {k.start}: "
                 f"{describe_params(k.params)} · {tokens}seed {k.seed} · finish {k.finish}</sub>")
    return line


def _fenced(text: str) -> list[str]:
    """A fenced block longer than any backtick run inside the text."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", *text.split("\n"), fence]


def _inline(text: str) -> str:
    """Text safe inside a heading or list item: one line, Markdown punctuation escaped."""
    text = " ".join(text.split())
    return re.sub(r"([\\`*_{}\[\]<>#|!])", r"\\\1", text)


def _date(stamp: str) -> str:
    return stamp.replace("T", " ").removesuffix("+00:00") + (" UTC" if "+00:00" in stamp else "")


# --- JSONL ---------------------------------------------------------------------------------------

def jsonl_records(session: Session, *,
                  all_branches: bool = False) -> Iterator[dict[str, Any]]:
    """One record per completion: what a dataset needs to rebuild the input and the output.
    With `all_branches`, every turn of the tree once (under the first branch, in `/branch`'s
    numbering, that holds it), each record saying which branch that is."""
    if not all_branches:
        for t_index in range(len(session.turns)):
            yield from _turn_records(session, session.turns, t_index)
        return
    seen: set[int] = set()
    for number, branch in enumerate(session.branches(), 1):
        for t_index, turn in enumerate(branch.turns):
            if id(turn) not in seen:
                seen.add(id(turn))
                for record in _turn_records(session, branch.turns, t_index):
                    yield {"branch": number, **record}


def _turn_records(session: Session, path: list[Turn], t_index: int) -> Iterator[dict[str, Any]]:
    """The records of the turn at `t_index` of `path` (a whole branch)."""
    turn = path[t_index]
    for c_index, completion in enumerate(turn.completions):
        record: dict[str, Any] = {
            "session": session.id,
            "turn": t_index + 1,
            "alternative": c_index + 1,
            "selected": c_index == turn.selected,
            "mode": turn.mode,
            "prompt": turn.prompt,
        }
        if turn.compare:
            record["compare"] = True
        if turn.mode == "chat":
            record["messages"] = [*chat_messages(path[:t_index]),
                                  {"role": "user", "content": turn.prompt}]
        record.update(
            completion=completion.text,
            finish=completion.last_finish,
            model=completion.model,
            params=completion.params.to_dict(),
            seed=completion.seed,
            stats=completion.stats.to_dict() if completion.stats is not None else None,
            continuations=[
                {"start": k.start, "params": k.params.to_dict(), "seed": k.seed,
                 "finish": k.finish,
                 "stats": k.stats.to_dict() if k.stats is not None else None}
                for k in completion.continuations
            ],
            created=completion.created,
        )
        if completion.forced is not None:
            record["forced"] = completion.forced.to_dict()
        yield record


def to_jsonl(session: Session, *, all_branches: bool = False) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n"
                   for r in jsonl_records(session, all_branches=all_branches))
