"""`textgen`: argument parsing and dispatch. `python -m repl` lands here too.

Heavy imports (torch, transformers, textual) happen inside the commands, so `--help` and the
first screen of the TUI appear at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from repl import __version__
from repl.errors import TextgenError

# Each module adds its subcommand with `add_parser(subparsers)`; its handler is `args.func`.
COMMAND_MODULES = ("repl.oneshot", "repl.serve", "repl.api", "repl.export",
                   "repl.session_cli")


def build_parser() -> argparse.ArgumentParser:
    from repl.options import add_chat_arguments, add_model_arguments, add_sampling_arguments

    parser = argparse.ArgumentParser(
        prog="textgen",
        description="An interactive terminal app for small generative text models. With no "
                    "command it opens the TUI (or the plain REPL when not on a terminal).",
    )
    parser.add_argument("--version", action="version", version=f"textgen {__version__}")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--plain", action="store_true",
                        help="the line-mode REPL instead of the full-screen TUI")
    parser.add_argument("--tui", action="store_true",
                        help="the full-screen TUI even when stdin/stdout is not a terminal "
                             "(textgen serve runs each browser tab's app this way)")
    parser.add_argument("--session", type=Path, metavar="FILE",
                        help="reopen a saved session and continue it")
    parser.add_argument("--sessions-dir", type=Path, metavar="DIR",
                        help="where sessions are saved (default: $TEXTGEN_SESSIONS_DIR or "
                             "sessions/)")
    parser.add_argument("--chat", action="store_true", help="start in chat mode")
    add_chat_arguments(parser)
    parser.set_defaults(func=run_interactive)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def run_interactive(args: argparse.Namespace) -> int:
    """The TUI on a terminal; the plain REPL with --plain or when piped."""
    if args.tui and not args.plain:
        face = "repl.tui.app"
    elif args.plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        face = "repl.plain"
    else:
        face = "repl.tui.app"
    try:
        module = importlib.import_module(face)
    except ModuleNotFoundError as exc:
        if exc.name != face:
            raise
        return _demo(args)
    return module.run(args)


def _demo(args: argparse.Namespace) -> int:
    """Until the interactive faces land: one short generation with the chosen model."""
    from repl import oneshot

    args.prompt, args.json = "The history of climate change research began", False
    if args.max_new_tokens is None:
        args.max_new_tokens = 60
    return oneshot.run(args)


def main(argv: list[str] | None = None) -> int:
    status = _run_command(argv)
    if argv is None:  # a real process, not a test calling main(): end it whatever its threads
        from repl.ending import exit_now

        exit_now(status)
    return status


def _run_command(argv: list[str] | None) -> int:
    from repl.ending import Terminated
    from repl.safe_text import printable

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TextgenError, ValueError) as exc:
        print(printable(f"textgen: error: {exc}", sys.stderr), file=sys.stderr)
        return 2
    except Terminated as stop:  # SIGTERM/SIGHUP: what had to be saved is saved
        return stop.exit_status
    except KeyboardInterrupt:
        print("\ntextgen: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
