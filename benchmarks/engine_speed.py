"""Engine speed: every backend against plain transformers `generate()` (and raw llama.cpp, the
anchor, when `llama_cpp` is importable), in one run, on the same prompts.

    .venv/bin/python benchmarks/engine_speed.py [--runs 5] [--new-tokens 100]
        [--models default,gpt2-small] [--threads N] [--data-dir DIR]

Columns, each the median of `--runs` timed runs after one warm-up, taken in interleaved rounds
so the machine's other load hits every engine alike:
- decode tok/s and TTFT: greedy, `--new-tokens` new tokens from a ~10-token prompt;
- prefill tok/s: a fresh long prompt (2,048 tokens, or the context less 8: GPT-2's 1,024)
  until its first token, nothing cached; "8k" the same for 8,184 tokens (the default model's
  context less 8), once per llama.cpp row (plain `generate()` would take many minutes);
- regen TTFT: the same long prompt again (regenerate): the prefix cache's payoff;
- ready s: opening the model in a fresh process (imports included), as `textgen` does;
- threads: the llama.cpp backend runs with `--threads` (every core by default) and, beside it,
  with one thread, so the table shows what the cores buy on this machine;
- perplexity: the first `--ppl-tokens` tokens of WikiText-2 test, scored in 512-token windows
  by the same loop on every backend (same tokens: both tokenize with the model's tokenizer).
"x plain" is over plain `generate()` on the same model, measured in the same process.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

PROMPT = "The history of climate change research began in the early"
LONG_TOKENS = 2048
HUGE_TOKENS = 8192  # the "8k" column: the context less 8, where the model has that much
WINDOW = 512


@dataclass
class Timing:
    ttft_s: float
    decode_tok_s: float
    new_tokens: int


@dataclass
class Row:
    engine: str
    model: str
    timings: list[Timing] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)  # tok/s
    regen_ttft: list[float] = field(default_factory=list)  # s
    prefill_8k: float | None = None  # tok/s
    ready_s: float | None = None
    perplexity: float | None = None

    @property
    def decode(self) -> float:
        return statistics.median(t.decode_tok_s for t in self.timings)

    @property
    def ttft_ms(self) -> float:
        return statistics.median(t.ttft_s for t in self.timings) * 1000


# --- the engines --------------------------------------------------------------------------------

class Engine:
    """One row: how it generates a short prompt, prefills a long one, and scores perplexity."""

    label = ""

    def short(self, new_tokens: int) -> Timing:
        raise NotImplementedError

    def long(self, ids: list[int], fresh: bool) -> float:
        """Seconds from request to the first token of `ids` (fresh: nothing cached)."""
        raise NotImplementedError

    def perplexity(self, ids: list[int]) -> float | None:
        return None


class PlainGenerate(Engine):
    """`model.generate()`, fp32 eager, greedy: the baseline every ratio is taken against."""

    label = "transformers generate() fp32"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def _run(self, input_ids: Any, new_tokens: int) -> Timing:
        import torch

        clock = _FirstTokenClock()
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=clock,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                temperature=None, top_p=None, top_k=None)
        finished = time.perf_counter()
        generated = out.shape[1] - input_ids.shape[1]
        assert clock.first_at is not None
        decode = (generated - 1) / (finished - clock.first_at) if generated > 1 else 0.0
        return Timing(clock.first_at - started, decode, generated)

    def short(self, new_tokens: int) -> Timing:
        return self._run(self.tokenizer(PROMPT, return_tensors="pt").input_ids, new_tokens)

    def long(self, ids: list[int], fresh: bool) -> float:
        import torch

        return self._run(torch.tensor([ids]), 1).ttft_s

    def perplexity(self, ids: list[int]) -> float:
        import torch

        nll, count = 0.0, 0
        with torch.inference_mode():
            for window in _windows(ids):
                logits = self.model(torch.tensor([window])).logits[0].float()  # (len, vocab)
                logp = torch.log_softmax(logits[:-1], dim=-1)
                nll -= float(logp.gather(1, torch.tensor(window[1:])[:, None]).sum())
                count += len(window) - 1
        return math.exp(nll / count)


class TextgenBackend(Engine):
    """A textgen backend through its public stream() API, as the faces use it."""

    def __init__(self, backend: Any, label: str) -> None:
        self.backend, self.label = backend, label

    def _stats(self, request: Any) -> Any:
        from repl.engine import GenerationStats

        stats = None
        for item in self.backend.stream(request):
            if isinstance(item, GenerationStats):
                stats = item
        assert stats is not None and stats.ttft_s is not None
        return stats

    def short(self, new_tokens: int) -> Timing:
        from repl.engine import GenerationRequest
        from repl.params import preset

        params = preset("greedy").replace(max_new_tokens=new_tokens, seed=0)
        self.backend.clear_cache()  # a first generation, not a regenerate
        stats = self._stats(GenerationRequest(prompt=PROMPT, params=params))
        return Timing(stats.ttft_s, stats.tokens_per_s or 0.0, stats.new_tokens)

    def long(self, ids: list[int], fresh: bool) -> float:
        from repl.engine import GenerationRequest
        from repl.params import preset

        if fresh:
            self.backend.clear_cache()  # a new prompt, not a regenerate
        params = preset("greedy").replace(max_new_tokens=1, seed=0)
        text = self.backend.tokenizer.decode(ids)
        return self._stats(GenerationRequest(prompt=text, params=params)).ttft_s

    def perplexity(self, ids: list[int]) -> float | None:
        if not hasattr(self.backend, "llm"):
            return None  # the transformers backend is the plain model: same number
        return llama_perplexity(self.backend.llm.model_path, ids, self.backend.llm.n_threads)


class RawLlamaCpp(Engine):
    """llama-cpp-python's own completion loop and sampler on the same gguf: the anchor."""

    def __init__(self, gguf: Path, threads: int) -> None:
        from repl.engine.llama_open import open_llama

        self.llm = open_llama(gguf, n_ctx=0, n_threads=threads, n_threads_batch=threads,
                         verbose=False)  # n_ctx=0: the model's own context, as the backend
        self.label = f"llama.cpp itself ({_threads(threads)})"

    def short(self, new_tokens: int) -> Timing:
        self.llm.reset()
        started = time.perf_counter()
        first_at, count = None, 0
        for _ in self.llm.create_completion(PROMPT, max_tokens=new_tokens, temperature=0.0,
                                            stream=True):
            count += 1
            first_at = first_at or time.perf_counter()
        finished = time.perf_counter()
        assert first_at is not None
        return Timing(first_at - started, (count - 1) / (finished - first_at), count)

    def long(self, ids: list[int], fresh: bool) -> float:
        if fresh:
            self.llm.reset()
        started = time.perf_counter()
        next(iter(self.llm.create_completion(ids, max_tokens=1, temperature=0.0, stream=True)))
        return time.perf_counter() - started


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


def _windows(ids: list[int]) -> list[list[int]]:
    return [ids[i:i + WINDOW] for i in range(0, len(ids) - 1, WINDOW) if len(ids[i:i + WINDOW]) > 1]


def llama_perplexity(gguf: str | Path, ids: list[int], threads: int) -> float:
    """The same windows, scored from llama.cpp's logits of every position."""
    import numpy as np

    from repl.engine.llama_open import open_llama

    llm = open_llama(gguf, n_ctx=WINDOW, n_batch=WINDOW, n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    nll, count = 0.0, 0
    for window in _windows(ids):
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)  # (len-1, vocab)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    llm.close()
    return math.exp(nll / count)


# --- models -------------------------------------------------------------------------------------

def model_spec(name: str) -> str:
    """`default`, or a saved GPT-2-small-shaped random model (saved once, so llama.cpp's
    conversion of it is cached too)."""
    if name == "default":
        return "default"
    from repl.paths import cache_dir
    from tests.tiny_models import GPT2_SMALL, save_random_gpt2

    folder = cache_dir() / "bench" / "gpt2-small-random"
    if not (folder / "model.safetensors").is_file():
        save_random_gpt2(folder, GPT2_SMALL)
    return str(folder)


def ready_seconds(spec: str, backend: str, threads: int) -> float:
    """Wall time for a fresh process to open the model on `backend` (imports included)."""
    code = ("import time, sys; t = time.perf_counter(); from repl.engine import open_backend; "
            f"open_backend({spec!r}, backend={backend!r}, threads={threads}); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def long_prompt(tokenizer: Any, data_dir: Path) -> list[int]:
    text = (data_dir / "wiki.test.raw").read_text("utf-8")
    ids = tokenizer(text[:200_000], add_special_tokens=False).input_ids
    return list(ids)


def measure(runs: int, calls: list[Callable[[], None]]) -> None:
    """Each call once untimed (warm-up), then `runs` rounds of all of them, interleaved."""
    for call in calls:
        call()
    for _ in range(runs):
        for call in calls:
            call()


def bench_model(name: str, args: argparse.Namespace) -> list[Row]:
    from repl.engine import TransformersBackend, open_backend
    from repl.models import load_model

    spec = model_spec(name)
    loaded = load_model(spec, device="cpu")
    # Plain generate() must make exactly --new-tokens: keep EOS away in its config.
    loaded.model.generation_config.min_new_tokens = args.new_tokens
    engines: list[tuple[Engine, str | None]] = [
        (PlainGenerate(loaded.model, loaded.tokenizer), "transformers"),
        (TextgenBackend(TransformersBackend(loaded), "textgen transformers backend"), None),
    ]
    llamas = []
    try:
        for threads in dict.fromkeys([args.threads, 1]):  # every core, then one
            llama = open_backend(spec, backend="llama.cpp", threads=threads)
            llamas.append(llama)
            engines.append((TextgenBackend(llama, f"textgen llama.cpp backend "
                                                  f"({llama.info.dtype}, {_threads(threads)})"),
                            "llama.cpp" if threads == args.threads else None))
        engines.append((RawLlamaCpp(Path(llamas[0].llm.model_path), args.threads), None))
    except Exception as exc:  # a missing runtime is a row left out, and says why
        print(f"  llama.cpp rows left out: {exc}", file=sys.stderr)
    ids = long_prompt(loaded.tokenizer, args.data_dir)
    # 2,048 tokens, or what the model's context leaves room for (GPT-2: 1,024).
    context = loaded.info.context_length or LONG_TOKENS
    long_ids = ids[:min(LONG_TOKENS, context - 8)]
    huge_ids = ids[:HUGE_TOKENS - 8] if context >= HUGE_TOKENS and args.huge else []
    ppl_ids = ids[: args.ppl_tokens]
    rows = [Row(engine.label, name) for engine, _ in engines]
    print(f"{name}: {len(loaded.tokenizer(PROMPT).input_ids)}-token prompt, "
          f"{args.new_tokens} new tokens, {args.runs} runs", file=sys.stderr)

    def short(engine: Engine, row: Row) -> Callable[[], None]:
        return lambda: row.timings.append(engine.short(args.new_tokens))

    def long(engine: Engine, row: Row) -> Callable[[], None]:
        def call() -> None:
            fresh = engine.long(long_ids, fresh=True)
            row.prefill.append(len(long_ids) / fresh)
            row.regen_ttft.append(engine.long(long_ids, fresh=False))
        return call

    pairs = list(zip(engines, rows, strict=True))
    measure(args.runs, [short(e, r) for (e, _), r in pairs])
    measure(max(1, args.runs // 2), [long(e, r) for (e, _), r in pairs])
    for row in rows:  # the warm-up runs are not counted
        row.timings = row.timings[1:]
        row.prefill, row.regen_ttft = row.prefill[1:], row.regen_ttft[1:]
    for (engine, backend), row in pairs:
        if huge_ids and not isinstance(engine, PlainGenerate) and (
                isinstance(engine, RawLlamaCpp) or hasattr(engine.backend, "llm")):
            row.prefill_8k = len(huge_ids) / engine.long(huge_ids, fresh=True)
        if backend is not None:  # once per backend, not per thread count
            row.ready_s = statistics.median(ready_seconds(spec, backend, args.threads)
                                            for _ in range(2))
            if args.ppl_tokens:
                row.perplexity = engine.perplexity(ppl_ids)
        print(f"  {row.engine}: {row.decode:.1f} tok/s, TTFT {row.ttft_ms:.0f} ms",
              file=sys.stderr)
    for llama in llamas:
        llama.close()
    return rows


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"


def table(rows: list[Row]) -> str:
    lines = ["| engine | model | decode tok/s | x plain | TTFT ms | x plain TTFT | "
             "prefill tok/s (long) | prefill tok/s (8k) | regen TTFT ms (long) | ready s | "
             "perplexity |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    plain: dict[str, Row] = {}
    for row in rows:
        base = plain.setdefault(row.model, row)
        prefill = f"{statistics.median(row.prefill):.0f}" if row.prefill else "-"
        regen = f"{statistics.median(row.regen_ttft) * 1000:.0f}" if row.regen_ttft else "-"
        huge = f"{row.prefill_8k:.0f}" if row.prefill_8k is not None else "-"
        ready = f"{row.ready_s:.2f}" if row.ready_s is not None else "-"
        ppl = f"{row.perplexity:.3f}" if row.perplexity is not None else "-"
        lines.append(
            f"| {row.engine} | {row.model} | {row.decode:.1f} | {row.decode / base.decode:.2f} "
            f"| {row.ttft_ms:.0f} | {row.ttft_ms / base.ttft_ms:.2f} | {prefill} | {huge} | "
            f"{regen} | {ready} | {ppl} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from repl.engine.cpu import usable_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per row (median)")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--models", default="default,gpt2-small",
                        help="comma-separated: default, gpt2-small")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--data-dir", type=Path,
                        default=ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1",
                        help="a folder with wiki.test.raw (WikiText-2 raw)")
    parser.add_argument("--no-8k", dest="huge", action="store_false",
                        help="leave out the 8k-token prefill (minutes on 2 cores)")
    parser.add_argument("--ppl-tokens", type=int, default=4096,
                        help="tokens of WikiText-2 test to score (0: no perplexity)")
    args = parser.parse_args(argv)

    import torch

    rows = [row for name in args.models.split(",") for row in bench_model(name, args)]
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); medians of "
          f"{args.runs} runs; {args.new_tokens} new tokens, greedy; perplexity on "
          f"{args.ppl_tokens} WikiText-2 test tokens in {WINDOW}-token windows; "
          "x plain TTFT: lower is better")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
