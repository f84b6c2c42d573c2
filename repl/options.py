"""Command-line options shared by the faces: model choice and sampling parameters."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from repl.errors import TextgenError
from repl.params import DEFAULT_PRESET, PRESETS, SamplingParams, preset


def add_model_arguments(parser: argparse.ArgumentParser, remote_key: bool = True) -> None:
    """`remote_key=False` leaves out --api-key, for a command whose own --api-key means
    something else (`textgen api`: the key its clients must bring)."""
    parser.add_argument(
        "--model", "-m", default="default", metavar="SPEC",
        help="`default` (SmolLM2-135M-Instruct, offline), a save_pretrained directory such as "
             "models/NAME, a .gguf file, a hub id such as gpt2, or an OpenAI-compatible "
             "server: http://HOST:PORT/v1 or http://HOST:PORT/v1#MODEL (default: %(default)s)",
    )
    if remote_key:
        parser.add_argument("--api-key", dest="remote_api_key", metavar="KEY",
                            help="the key of a server given as --model URL (default: "
                                 "$OPENAI_API_KEY)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                        help="weights' dtype (default: bf16/fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--backend", choices=["auto", "llama.cpp", "transformers"],
                        default="auto",
                        help="the engine: llama.cpp (fast on the CPU: gguf weights, converted "
                             "once), transformers (plain generate(): the reference, and the GPU "
                             "path), or auto: llama.cpp where it can run the model on the CPU "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="CPU threads for the llama.cpp backend (default: at each "
                             "generation, the cores other processes leave free)")


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """--system and --chat-template: what chat mode sends besides the user's messages."""
    parser.add_argument("--system", metavar="TEXT",
                        help="a system prompt, sent first in chat mode (kept in the session)")
    parser.add_argument("--chat-template", type=Path, metavar="FILE",
                        help="a Jinja chat template to use instead of the model's own (for a "
                             "fine-tuned model whose saved template is wrong or missing)")


def read_chat_template(args: argparse.Namespace) -> str | None:
    """The --chat-template file's text, or None; TextgenError when it cannot be used."""
    path: Path | None = getattr(args, "chat_template", None)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TextgenError(f"cannot read the chat template {path}: {exc}") from None
    try:
        import jinja2

        jinja2.Environment().parse(text)
    except ImportError:
        pass
    except jinja2.TemplateSyntaxError as exc:
        raise TextgenError(f"{path}:{exc.lineno}: not a valid Jinja template: "
                           f"{exc.message}") from None
    if not text.strip():
        raise TextgenError(f"the chat template {path} is empty.")
    return text


def use_chat_template(backend: Any, template: str | None) -> None:
    """Make `backend` chat with `template` (both tokenizers read `chat_template` each time
    they apply it), and say in its info that it can chat."""
    if template is None:
        return
    if getattr(backend, "tokenizer", None) is None:
        raise TextgenError(f"{backend.info.name} renders its own chat prompts; --chat-template "
                           "works with local models only.")
    backend.tokenizer.chat_template = template
    backend.info = dataclasses.replace(backend.info, has_chat_template=True)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `repl.engine.open_backend` that the command line chose."""
    return {"device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None),
            "backend": getattr(args, "backend", "auto") or "auto",
            "threads": getattr(args, "threads", None),
            "api_key": getattr(args, "remote_api_key", None)}


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (flags override the preset)")
    group.add_argument("--preset", default=DEFAULT_PRESET,
                       help=f"one of {', '.join(PRESETS)} (default: %(default)s)")
    group.add_argument("--max-new-tokens", "-n", type=int, metavar="N")
    group.add_argument("--temperature", "-t", type=float, metavar="T",
                       help="0 is greedy decoding")
    group.add_argument("--top-k", type=int, metavar="K", help="0 turns it off")
    group.add_argument("--top-p", type=float, metavar="P", help="1 turns it off")
    group.add_argument("--min-p", type=float, metavar="P", help="0 turns it off")
    group.add_argument("--repetition-penalty", type=float, metavar="R", help="1 turns it off")
    group.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="0 turns it off")
    group.add_argument("--seed", type=int, help="fixes the output; drawn and reported if unset")
    group.add_argument("--stop", action="append", metavar="TEXT",
                       help="end the generation at this text (repeatable)")


def params_from_args(args: argparse.Namespace, base: SamplingParams | None = None
                     ) -> SamplingParams:
    """The preset (or `base`, e.g. a resumed session's params, when no other preset was asked
    for), with every flag the user gave applied on top; ValueError if invalid."""
    changes = {
        name: getattr(args, name)
        for name in ("max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                     "repetition_penalty", "no_repeat_ngram_size", "seed")
        if getattr(args, name, None) is not None
    }
    if getattr(args, "stop", None):
        changes["stop"] = tuple(args.stop)
    asked_preset = getattr(args, "preset", DEFAULT_PRESET)
    params = base if base is not None and asked_preset == DEFAULT_PRESET else preset(asked_preset)
    # A temperature above 0 asks for sampling even from the greedy preset.
    if changes.get("temperature", 0) > 0:
        changes["do_sample"] = True
    return params.replace(**changes)
