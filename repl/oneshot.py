"""`textgen generate PROMPT`: stream one completion to stdout, stats to stderr."""

from __future__ import annotations

import argparse
import json
import sys

from repl.ending import Terminated, on_exit_signals
from repl.errors import TextgenError
from repl.options import (
    add_chat_arguments,
    add_model_arguments,
    add_sampling_arguments,
    backend_options,
    params_from_args,
    read_chat_template,
    use_chat_template,
)
from repl.safe_text import for_stream, neutralise


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate one completion and exit",
        description="Stream one completion of PROMPT to stdout; statistics go to stderr.",
    )
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt, or - to read it from stdin")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--chat", action="store_true",
                        help="send PROMPT as a user message through the chat template "
                             "(--system implies it)")
    add_chat_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON record (text, params, seed, stats) instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repl.engine import GenerationRequest, GenerationStats, Notice, open_backend

    prompt = prompt_from_stdin() if args.prompt == "-" else args.prompt
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the locale could not decode, kept as lone surrogates
        raise TextgenError("the prompt is not valid UTF-8 text.") from None
    params = params_from_args(args)  # validate before the (slower) model load
    chat = args.chat or bool(args.system)
    if not prompt.strip() and chat:
        raise TextgenError("the prompt is empty.")
    template = read_chat_template(args)
    generator = open_backend(args.model, **backend_options(args))
    use_chat_template(generator, template)
    params.check_fits(generator.info.context_length)
    if chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        request = GenerationRequest.chat([*system, {"role": "user", "content": prompt}], params)
    else:
        request = GenerationRequest(prompt=prompt, params=params)
    text: list[str] = []
    stats: GenerationStats | None = None
    stopped_by: list[int] = []

    def on_signal(signum: int) -> None:
        # SIGTERM/SIGHUP: stop like Ctrl+C, print what there is, then exit 128 + signum.
        stopped_by.append(signum)
        generator.cancel()

    with on_exit_signals(on_signal):
        for item in generator.stream(request):
            if stopped_by:  # a signal that came before the engine was ready to be cancelled
                generator.cancel()
            if isinstance(item, Notice):
                print(f"textgen: note: {neutralise(item.message)}", file=sys.stderr)
            elif isinstance(item, GenerationStats):
                stats = item
            elif isinstance(item, str):
                text.append(item)
                if not args.json:  # JSON escapes control characters itself
                    sys.stdout.write(for_stream(item, sys.stdout))
                    sys.stdout.flush()
    if stats is None:  # the engine ended without its last item: only a signal does that
        raise Terminated(stopped_by[0] if stopped_by else 15)
    if args.json:
        record = {
            "model": generator.info.to_dict(),
            "mode": request.mode,
            "prompt": prompt,
            **({"messages": list(request.messages)} if request.messages is not None else {}),
            "text": "".join(text),
            "params": params.to_dict(),
            "seed": stats.seed,
            "stats": stats.to_dict(),
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        print()
        print(f"[{generator.info.name}] {stats.summary()}", file=sys.stderr)
    if stopped_by:
        print(f"textgen: stopped by {Terminated(stopped_by[0]).name}", file=sys.stderr)
        return 128 + stopped_by[0]
    return 0


def prompt_from_stdin() -> str:
    """The whole of stdin as the prompt, decoded as UTF-8 here (the locale might turn bad bytes
    into lone surrogates), without the newline that echo and editors add at its end."""
    raw_input = getattr(sys.stdin, "buffer", None)
    if raw_input is None:  # a text stream (tests)
        text = sys.stdin.read()
    else:
        data = raw_input.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextgenError(f"stdin is not UTF-8 text (a bad byte at {exc.start + 1}); "
                               "convert it first, e.g. with iconv.") from None
    text = text.rstrip("\n")
    if not text.strip():
        raise TextgenError("the prompt on stdin is empty; pipe some text in, or give PROMPT.")
    return text
