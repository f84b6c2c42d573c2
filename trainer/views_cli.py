"""`textgen-train timeline` and `textgen-train diff` (what a run's stages say, what tuning
changed), and the `train` flags for chat data and samples while training.

Heavy imports stay inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from repl.errors import TextgenError

TIMELINE_EXAMPLES = """examples:
  textgen-train timeline models/demo --prompt "The history of" --seed 1
  textgen-train timeline models/chat --prompt "What is a lighthouse?" --format md
"""

DIFF_EXAMPLES = """examples:
  textgen-train diff default models/demo --data-dir data/wikitext-2-v1 --max-tokens 3000
  textgen-train diff default models/notes --files notes/ --html changed.html
"""


def add_chat_and_sample_arguments(train: argparse.ArgumentParser) -> None:
    from trainer.samples import SAMPLE_TOKENS

    group = train.add_argument_group(
        "chat data and samples",
        "--train-files .jsonl rows with 'messages' (chat format) or 'prompt'/'completion' "
        "train a chat model: the chat template is applied and only the assistant's tokens "
        "carry loss.")
    group.add_argument("--chat-template", type=Path, metavar="FILE",
                       help="a Jinja chat template for chat data (default: the model's own; "
                            "saved with the model)")
    group.add_argument("--sample-prompts", type=Path, metavar="FILE",
                       help="prompts (one a line) generated greedily at every evaluation, into "
                            "report.json, TensorBoard and the log (default: a few built-in)")
    group.add_argument("--sample-tokens", type=int, default=SAMPLE_TOKENS, metavar="N",
                       help=f"tokens per sample (default {SAMPLE_TOKENS})")


def add_view_commands(sub: argparse._SubParsersAction) -> None:
    timeline = sub.add_parser(
        "timeline", help="one prompt and seed through the base model, each kept checkpoint "
                         "and the final model",
        description="Generate the same prompt with the same seed at step 0 (the base model "
                    "the run started from), every kept checkpoint (train with "
                    "--keep-checkpoints) and the final model, side by side, each with the "
                    "validation perplexity measured at its step.",
        epilog=TIMELINE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    timeline.add_argument("run", type=Path, metavar="RUN", help="the run's folder: models/NAME")
    timeline.add_argument("--prompt", required=True, help="the prompt (a user message with "
                                                          "--chat)")
    timeline.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    timeline.add_argument("--max-new-tokens", type=int, default=40, metavar="N")
    mode = timeline.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true", default=None,
                      help="send the prompt through the chat template (default: when the run "
                           "trained on chat data)")
    mode.add_argument("--complete", dest="chat", action="store_false",
                      help="plain completion even for a chat run")
    timeline.add_argument("--base", metavar="SPEC",
                          help="the step-0 model (default: the one the run's report names)")
    timeline.add_argument("--format", choices=("table", "md", "json"), default="table")
    timeline.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    timeline.set_defaults(func=run_timeline_command)

    diff = sub.add_parser(
        "diff", help="what fine-tuning changed: per-token log-probability gained and lost",
        description="Teacher-force text through BASE and TUNED (same tokenizer): each token "
                    "coloured by the change in its log-probability (green gained, red lost), "
                    "perplexity per document under each model, and the tokens that gained "
                    "and lost most. --html writes the same as a page to share.",
        epilog=DIFF_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    diff.add_argument("base", metavar="BASE", help="model spec before tuning, e.g. default")
    diff.add_argument("tuned", metavar="TUNED", help="model spec after tuning, e.g. models/NAME")
    source = diff.add_mutually_exclusive_group(required=True)
    source.add_argument("--files", nargs="+", metavar="PATH",
                        help=".txt/.md files (one document each), .jsonl or folders of them")
    source.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="a WikiText-2 folder: its articles are the documents")
    diff.add_argument("--split", choices=("train", "valid", "test"), default="valid",
                      help="with --data-dir (default: valid)")
    diff.add_argument("--text-field", default="text", metavar="NAME")
    diff.add_argument("--max-tokens", type=int, default=4000, metavar="N",
                      help="score at most N tokens over all documents (default 4000)")
    diff.add_argument("--window", type=int, metavar="W",
                      help="tokens of context per window (default: the context up to 512)")
    diff.add_argument("--top", type=int, default=15, metavar="K",
                      help="tokens in each of the gained / lost tables")
    diff.add_argument("--show-tokens", type=int, default=300, metavar="N",
                      help="tokens of coloured text to print (0: none)")
    diff.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    diff.add_argument("--json", action="store_true", help="print one JSON record instead")
    diff.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    diff.set_defaults(func=run_diff_command)


def run_timeline_command(args: argparse.Namespace, argv: list[str]) -> int:
    from trainer.timeline import print_table, run_timeline, to_markdown

    if args.max_new_tokens < 1:
        raise TextgenError(f"--max-new-tokens {args.max_new_tokens}: use at least 1.")
    if not 0 <= args.seed < 2**32:
        raise TextgenError(f"--seed {args.seed}: use a whole number from 0 to {2**32 - 1}.")

    def progress(stage) -> None:
        print(f"generating with {stage.label} ({stage.spec}) ...", file=sys.stderr)

    result = run_timeline(args.run, args.prompt, seed=args.seed,
                          max_new_tokens=args.max_new_tokens, chat=args.chat, base=args.base,
                          device=args.device, progress=progress)  # stderr: JSON stays clean
    if args.format == "json":
        print(json.dumps(result, indent=2))
    elif args.format == "md":
        print(to_markdown(result), end="")
    else:
        print_table(result)
    return 0


def run_diff_command(args: argparse.Namespace, argv: list[str]) -> int:
    from repl.models import load_model
    from trainer.data import DataSpec, split_documents, user_documents
    from trainer.diff import diff_models, print_report, write_html

    for flag, value in (("--max-tokens", args.max_tokens), ("--top", args.top)):
        if value < 1:
            raise TextgenError(f"{flag} {value}: use a positive whole number.")
    if args.show_tokens < 0:
        raise TextgenError(f"--show-tokens {args.show_tokens}: use 0 or more.")
    if args.files:
        documents = _named_documents(args.files, args.text_field, user_documents)
    else:
        articles = split_documents(DataSpec(data_dir=args.data_dir), [args.split])[args.split]
        documents = [(_article_title(text, i), text) for i, text in enumerate(articles)]
    def say(text: str) -> None:  # stderr, so --json's stdout stays one record
        print(text, file=sys.stderr)

    say(f"loading {args.base} and {args.tuned} ...")
    base = load_model(args.base, device=args.device, dtype="fp32")
    tuned = load_model(args.tuned, device=args.device, dtype="fp32")
    say("teacher-forcing the text through both ...")
    result = diff_models(base, tuned, documents, max_tokens=args.max_tokens, window=args.window,
                         base_name=args.base, tuned_name=args.tuned)
    if args.html:
        write_html(result, args.html)
    if args.json:
        record = result.to_dict()
        record["html"] = str(args.html) if args.html else None
        print(json.dumps(record))
    else:
        print_report(result, show_tokens=args.show_tokens, top=args.top)
        if args.html:
            print(f"HTML report: {args.html}")
    return 0


def _named_documents(paths: list[str], text_field: str, read) -> list[tuple[str, str]]:
    """(name, text) per document: the file's name, with the row number for .jsonl rows."""
    from trainer.data import TEXT_SUFFIXES

    named: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if path.is_dir() and file.suffix not in (*TEXT_SUFFIXES, ".jsonl"):
                continue
            texts = read([file], text_field)
            named += [(file.name if len(texts) == 1 else f"{file.name}:{i + 1}", text)
                      for i, text in enumerate(texts)]
    return named


def _article_title(text: str, index: int) -> str:
    first = text.strip().splitlines()[0].strip(" =") if text.strip() else ""
    return first[:60] or f"article {index + 1}"
