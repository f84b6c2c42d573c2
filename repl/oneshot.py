"""`textgen generate PROMPT`: stream one completion to stdout, stats to stderr."""

from __future__ import annotations

import argparse
import json
import sys

from repl.errors import TextgenError
from repl.options import (
    add_model_arguments,
    add_sampling_arguments,
    params_from_args,
    wants_fast,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate one completion and exit",
        description="Stream one completion of PROMPT to stdout; statistics go to stderr.",
    )
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt, or - to read it from stdin")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--chat", action="store_true",
                        help="send PROMPT as a user message through the chat template")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON record (text, params, seed, stats) instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repl.engine import GenerationRequest, GenerationStats, Generator, Notice
    from repl.models import load_model

    # A piped prompt loses the newline that echo and editors add at its end.
    prompt = sys.stdin.read().rstrip("\n") if args.prompt == "-" else args.prompt
    params = params_from_args(args)  # validate before the (slower) model load
    if not prompt.strip() and args.chat:
        raise TextgenError("the prompt is empty.")
    loaded = load_model(args.model, device=args.device, dtype=args.dtype,
                        fast=wants_fast(args, default=False))
    params.check_fits(loaded.info.context_length)
    generator = Generator(loaded)
    if args.chat:
        request = GenerationRequest.chat([{"role": "user", "content": prompt}], params)
    else:
        request = GenerationRequest(prompt=prompt, params=params)
    text: list[str] = []
    stats: GenerationStats | None = None
    for item in generator.stream(request):
        if isinstance(item, Notice):
            print(f"textgen: note: {item.message}", file=sys.stderr)
        elif isinstance(item, GenerationStats):
            stats = item
        else:
            text.append(item)
            if not args.json:
                sys.stdout.write(item)
                sys.stdout.flush()
    assert stats is not None
    if args.json:
        record = {
            "model": loaded.info.to_dict(),
            "mode": request.mode,
            "prompt": prompt,
            "text": "".join(text),
            "params": params.to_dict(),
            "seed": stats.seed,
            "stats": stats.to_dict(),
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        print()
        print(f"[{loaded.info.name}] {stats.summary()}", file=sys.stderr)
    return 0
