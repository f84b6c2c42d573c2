"""Which gguf weight format runs the default model fastest on llama.cpp, at what perplexity.

    .venv/bin/python benchmarks/gguf_formats.py [--formats Q4_1,Q8_0,Q4_0,IQ4_NL,F16]
        [--threads 1] [--runs 3] [--long 2048,8192] [--data-dir DIR]

The default model ships as Q4_1. Each other format is llama.cpp's own quantizer applied to that
file once (cached under <cache>/bench/formats/), so every row holds the same weights, rounded
again. llama.cpp runs each directly (no textgen code), with a greedy eval-and-argmax loop:
- decode tok/s: 32 steps after a ~10-token prompt; TTFT: that prompt until its first token;
- prefill tok/s at each `--long` size: a fresh WikiText-2 prompt until its first token;
- perplexity: the first 2,048 tokens of WikiText-2 test in 512-token windows (F16 of the Q4_1
  file is the fp32 reference: the dequantized weights, as transformers runs them).
Rows are measured in interleaved rounds so the machine's other load hits each alike; every rate
is given per wall second and per CPU second of this process (`time.process_time`): on a shared
machine the CPU-second figure is the kernel's own speed, the wall figure what a user waits.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from benchmarks.engine_speed import llama_perplexity  # noqa: E402  (the same windows)

PROMPT = b"The history of climate change research began in the early"
FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "IQ4_NL": 25}
DECODE_STEPS = 32
PPL_TOKENS = 2048


def format_file(name: str) -> Path:
    """The default model in format `name`, quantized once from the shipped Q4_1 file."""
    from llama_cpp import _logger, llama_model_quantize, llama_model_quantize_default_params

    from repl.models import default_gguf_path
    from repl.paths import cache_dir

    source = default_gguf_path()
    if name == "Q4_1":
        return source
    target = cache_dir() / "bench" / "formats" / f"{source.stem}.{name}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _logger.set_verbose(False)
        params = llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = FTYPES[name], True, 0
        partial = target.with_suffix(".partial")
        if llama_model_quantize(str(source).encode(), str(partial).encode(),
                                ctypes.byref(params)) != 0:
            raise SystemExit(f"llama.cpp could not quantize to {name}")
        partial.rename(target)
    return target


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def argmax(llm: Any) -> int:
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def one_round(llm: Any, long_ids: dict[int, list[int]], out: dict[str, list[float]]) -> None:
    llm.n_tokens = 0  # nothing cached
    with Clock() as first:
        llm.eval(llm.tokenize(PROMPT))
        token = argmax(llm)
    with Clock() as decode:
        for _ in range(DECODE_STEPS):
            llm.eval([token])
            token = argmax(llm)
    out.setdefault("ttft", []).append(first.wall * 1000)
    out.setdefault("ttft_cpu", []).append(first.cpu * 1000)
    out.setdefault("decode", []).append(DECODE_STEPS / decode.wall)
    out.setdefault("decode_cpu", []).append(DECODE_STEPS / decode.cpu)
    for size, ids in long_ids.items():
        llm.n_tokens = 0
        with Clock() as prefill:
            llm.eval(ids)
            argmax(llm)
        out.setdefault(f"prefill{size}", []).append(size / prefill.wall)
        out.setdefault(f"prefill{size}_cpu", []).append(size / prefill.cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="Q4_1,Q8_0,Q4_0,IQ4_NL,F16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--long", default="2048", help="prefill sizes, comma-separated")
    parser.add_argument("--data-dir", type=Path,
                        default=ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1")
    args = parser.parse_args(argv)

    from repl.engine.llama_open import open_llama

    names = args.formats.split(",")
    sizes = [int(size) for size in args.long.split(",") if size]
    text = (args.data_dir / "wiki.test.raw").read_text("utf-8")[:400_000]
    llms = {name: open_llama(format_file(name), n_ctx=8192, n_batch=512, n_ubatch=512,
                        n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
            for name in names}
    ids = next(iter(llms.values())).tokenize(text.encode(), add_bos=False)
    long_ids = {size: ids[:size] for size in sizes}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for llm in llms.values():  # warm-up: the short prompt only (a long one is minutes)
        one_round(llm, {}, {})
    for _ in range(args.runs):
        for name, llm in llms.items():
            one_round(llm, long_ids, results[name])
    for llm in llms.values():
        llm.close()
    ppl = {name: llama_perplexity(format_file(name), ids[:PPL_TOKENS], args.threads)
           for name in names}

    def cell(name: str, key: str, digits: int = 0) -> str:
        wall, cpu = (statistics.median(results[name][k]) for k in (key, f"{key}_cpu"))
        return f"{wall:.{digits}f} / {cpu:.{digits}f}"

    print(f"{args.threads} thread(s), medians of {args.runs} rounds; each cell: per wall second"
          f" / per CPU second; perplexity on {PPL_TOKENS} WikiText-2 test tokens")
    reference = ppl.get("F16")
    print("| format | MB | decode tok/s | TTFT ms (10 tokens) | "
          + " | ".join(f"prefill tok/s ({size})" for size in sizes) + " | perplexity |")
    print("|---|---:|---:|---:|" + "---:|" * len(sizes) + "---:|")
    for name in names:
        size_mb = format_file(name).stat().st_size / 1e6
        vs = f" ({(ppl[name] / reference - 1) * 100:+.2f}%)" if reference else ""
        print(f"| {name} | {size_mb:.0f} | {cell(name, 'decode', 1)} | {cell(name, 'ttft')} | "
              + " | ".join(cell(name, f"prefill{size}") for size in sizes)
              + f" | {ppl[name]:.3f}{vs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
