"""Engine speed: time to first token and decode tokens/s, textgen's Generator against plain
transformers (and llama.cpp when `llama_cpp` is importable), in one run, on the same prompt.

    .venv/bin/python benchmarks/engine_speed.py [--runs 3] [--new-tokens 100]
        [--models default,gpt2-small]

Every engine decodes greedily and exactly `--new-tokens` tokens (min_new_tokens keeps EOS away),
from the same ~10-token prompt; each number is the median of `--runs` timed runs after one
warm-up, taken in interleaved rounds so the machine's other load hits every engine alike.
"x plain" is decode tokens/s over plain `model.generate()` on the same model, measured in the
same process, so a noisy, shared machine still gives a fair ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

PROMPT = "The history of climate change research began in the early"


@dataclass
class Timing:
    ttft_s: float
    decode_tok_s: float
    new_tokens: int


@dataclass
class Row:
    engine: str
    model: str
    timings: list[Timing]

    @property
    def decode(self) -> float:
        return statistics.median(t.decode_tok_s for t in self.timings)

    @property
    def ttft_ms(self) -> float:
        return statistics.median(t.ttft_s for t in self.timings) * 1000


class _FirstTokenClock:
    """A transformers streamer that only notes when the first new token arrived."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.first_at: float | None = None

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
        elif self.first_at is None:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def time_plain(model: Any, tokenizer: Any, new_tokens: int) -> Timing:
    """Plain `model.generate()`, fp32 eager, greedy: the baseline every ratio is taken against."""
    import torch

    clock = _FirstTokenClock()
    started = time.perf_counter()
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=clock,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            temperature=None, top_p=None, top_k=None,
        )
    finished = time.perf_counter()
    generated = out.shape[1] - input_ids.shape[1]
    assert clock.first_at is not None
    return Timing(clock.first_at - started, (generated - 1) / (finished - clock.first_at),
                  generated)


def time_engine(generator: Any, new_tokens: int) -> Timing:
    """textgen's Generator, through its public stream() API (worker thread, streamer, stats)."""
    from repl.engine import GenerationRequest, GenerationStats
    from repl.params import preset

    params = preset("greedy").replace(max_new_tokens=new_tokens, seed=0)
    stats = None
    for item in generator.stream(GenerationRequest(prompt=PROMPT, params=params)):
        if isinstance(item, GenerationStats):
            stats = item
    assert stats is not None and stats.ttft_s is not None and stats.tokens_per_s is not None
    return Timing(stats.ttft_s, stats.tokens_per_s, stats.new_tokens)


def time_llama_cpp(llm: Any, new_tokens: int) -> Timing:
    started = time.perf_counter()
    first_at = None
    count = 0
    for _ in llm.create_completion(PROMPT, max_tokens=new_tokens, temperature=0.0, stream=True):
        count += 1
        if first_at is None:
            first_at = time.perf_counter()
    finished = time.perf_counter()
    assert first_at is not None
    return Timing(first_at - started, (count - 1) / (finished - first_at), count)


def measure(runs: int, calls: list[Callable[[], Timing]]) -> list[list[Timing]]:
    """Timings of each call, taken in rounds (a, b, c, a, b, c, ...) so every engine sees the
    same mix of load from the machine's other users; one untimed warm-up each first."""
    for call in calls:
        call()  # first-call allocations, lazy imports
    timings: list[list[Timing]] = [[] for _ in calls]
    for _ in range(runs):
        for call, into in zip(calls, timings, strict=True):
            into.append(call())
    return timings


def load(name: str) -> Any:
    """A LoadedModel for `default` or for GPT-2-small-shaped random weights."""
    from repl.models import LoadedModel, ModelInfo, load_model

    if name == "default":
        return load_model("default", device="cpu")
    from tests.tiny_models import GPT2_SMALL, gpt2_tokenizer, random_gpt2

    model = random_gpt2(GPT2_SMALL)
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    info = ModelInfo(spec="gpt2-small-random", name=name,
                     parameters=sum(p.numel() for p in model.parameters()),
                     context_length=model.config.n_positions, device="cpu", dtype="float32",
                     has_chat_template=False)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def engines(loaded: Any, name: str) -> list[tuple[str, Callable[[int], Timing]]]:
    """(label, timed call) for each engine to compare on this model, plain first."""
    from repl.engine import Generator

    plain = Generator(loaded, fast=False)
    rows: list[tuple[str, Callable[[int], Timing]]] = [
        ("transformers generate() fp32", lambda n: time_plain(loaded.model, loaded.tokenizer, n)),
        ("textgen Generator --no-fast", lambda n: time_engine(plain, n)),
    ]
    fast = Generator(loaded)
    if fast.fast is not None:
        started = time.perf_counter()
        compiled = fast.fast.wait_compiled()
        print(f"  fast path: packed and compiled in {time.perf_counter() - started:.1f} s "
              f"({'ok' if compiled else fast.fast.error})", file=sys.stderr)
        label = f"textgen Generator fast ({fast.fast.weight_format}, compiled)"
        rows.append((label, lambda n: time_engine(fast, n)))
    llm = _llama_cpp(name)
    if llm is not None:
        rows.append(("llama.cpp (2 threads)", lambda n: time_llama_cpp(llm, n)))
    return rows


def _llama_cpp(name: str) -> Any:
    """llama.cpp on the default model's own gguf, when llama-cpp-python is installed."""
    if name != "default":
        return None
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from repl.models import default_gguf_path

    return Llama(str(default_gguf_path()), n_threads=2, verbose=False)


def table(rows: list[Row]) -> str:
    lines = ["| engine | model | decode tok/s | TTFT ms | x plain (decode) | x plain (TTFT) |",
             "|---|---|---:|---:|---:|---:|"]
    plain: dict[str, Row] = {}
    for row in rows:
        base = plain.setdefault(row.model, row)
        lines.append(
            f"| {row.engine} | {row.model} | {row.decode:.1f} | {row.ttft_ms:.0f} | "
            f"{row.decode / base.decode:.2f} | {base.ttft_ms / row.ttft_ms:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--models", default="default,gpt2-small",
                        help="comma-separated: default, gpt2-small")
    args = parser.parse_args(argv)

    import torch

    rows: list[Row] = []
    for name in args.models.split(","):
        loaded = load(name)
        # Both engines must generate exactly --new-tokens: keep EOS away in the shared config.
        loaded.model.generation_config.min_new_tokens = args.new_tokens
        prompt_tokens = len(loaded.tokenizer(PROMPT).input_ids)
        print(f"{name}: prompt {prompt_tokens} tokens, {args.new_tokens} new tokens, "
              f"{args.runs} runs", file=sys.stderr)
        compared = engines(loaded, name)
        results = measure(args.runs, [lambda call=call: call(args.new_tokens)
                                      for _, call in compared])
        for (label, _), timings in zip(compared, results, strict=True):
            made = {t.new_tokens for t in timings}
            if made != {args.new_tokens}:
                print(f"  warning: {label} generated {made} tokens", file=sys.stderr)
            rows.append(Row(label, name, timings))
            print(f"  {label}: {rows[-1].decode:.1f} tok/s, TTFT {rows[-1].ttft_ms:.0f} ms",
                  file=sys.stderr)
    llama = "installed" if _llama_cpp_available() else "not installed (no row)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; llama_cpp {llama}; "
          f"medians of {args.runs} runs, {args.new_tokens} new tokens, greedy")
    print(table(rows))
    return 0


def _llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


if __name__ == "__main__":
    sys.exit(main())
