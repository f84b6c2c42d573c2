"""Command-line options shared by the faces: model choice and sampling parameters."""

from __future__ import annotations

import argparse

from repl.params import DEFAULT_PRESET, PRESETS, SamplingParams, preset


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", default="default", metavar="SPEC",
        help="`default` (SmolLM2-135M-Instruct, offline), a save_pretrained directory such as "
             "models/NAME, a .gguf file, or a hub id such as gpt2 (default: %(default)s)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                        help="weights' dtype (default: bf16/fp16 on GPU, fp32 on CPU)")
    fast = parser.add_mutually_exclusive_group()
    fast.add_argument("--fast", dest="fast", action="store_true", default=None,
                      help="the fast CPU path: int8 weights, compiled in the background (default "
                           "in the TUI and the REPL; `generate` makes one completion and exits "
                           "before compiling pays, so it stays plain unless told)")
    fast.add_argument("--no-fast", dest="fast", action="store_false",
                      help="plain transformers generate()")


def wants_fast(args: argparse.Namespace, default: bool = True) -> bool:
    """--fast / --no-fast, else the command's default."""
    fast = getattr(args, "fast", None)
    return default if fast is None else fast


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
