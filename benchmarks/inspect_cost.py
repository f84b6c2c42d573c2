"""What inspect mode costs: decode tokens/s with token probabilities recorded vs not.

    .venv/bin/python benchmarks/inspect_cost.py [--model default] [--tokens 64] [--rounds 5]

Runs the same generation (same prompt, same seed, sampling with the default preset) through
`Backend.stream` with and without a `TokenTrace`, on the transformers and llama.cpp backends,
alternating off/on each round so that load from other processes hits both alike. Prints the
median decode rate of each, the relative cost, and the time of the recording work alone
(softmax + top-10 over the vocabulary).
"""

from __future__ import annotations

import argparse
import statistics
import time

from repl.engine import GenerationRequest, Generator, open_backend
from repl.errors import TextgenError
from repl.models import load_model
from repl.params import SamplingParams
from repl.token_probs import TokenTrace

PROMPT = "The history of the printing press begins"


def decode_rate(generator: Generator, params: SamplingParams, inspect: bool
                ) -> tuple[float, float]:
    """(decode tokens/s by the wall clock, CPU milliseconds of this process per new token).
    The CPU time is the steadier number on a machine shared with other work."""
    trace = TokenTrace() if inspect else None
    cpu = time.process_time()
    _, stats = generator.generate(GenerationRequest(PROMPT, params, trace=trace))
    cpu = time.process_time() - cpu
    if trace is not None:
        assert len(trace.steps) >= stats.new_tokens - 1  # a final EOS is recorded too
    assert stats.tokens_per_s is not None
    return stats.tokens_per_s, cpu * 1000 / stats.new_tokens


def hook_ms(vocab: int, repeats: int = 200) -> float:
    """Median time of the per-token recording work alone."""
    import torch

    trace = TokenTrace()
    scores = torch.randn(vocab)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trace.record(0, scores)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    loaded = load_model(args.model)
    params = SamplingParams(max_new_tokens=args.tokens, seed=0)
    paths = [("transformers", Generator(loaded))]
    try:
        paths.append(("llama.cpp", open_backend(args.model, backend="llama.cpp")))
    except TextgenError as exc:
        print(f"llama.cpp left out: {exc}")
    print(f"model {loaded.info.name} on {loaded.info.device}/{loaded.info.dtype}, "
          f"{args.tokens} tokens (balanced preset, seed 0), {args.rounds} rounds (median)")
    print(f"{'path':<13} {'off tok/s':>10} {'on tok/s':>10} {'cost':>7} "
          f"{'off CPU ms/tok':>15} {'on CPU ms/tok':>14} {'cost':>7}")
    for name, generator in paths:
        decode_rate(generator, params, False)  # warm-up
        off: list[tuple[float, float]] = []
        on: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            off.append(decode_rate(generator, params, False))
            on.append(decode_rate(generator, params, True))
        rate_off, rate_on = (statistics.median(r for r, _ in runs) for runs in (off, on))
        cpu_off, cpu_on = (statistics.median(c for _, c in runs) for runs in (off, on))
        print(f"{name:<13} {rate_off:>10.1f} {rate_on:>10.1f} "
              f"{(rate_off - rate_on) / rate_off:>7.1%} {cpu_off:>15.1f} {cpu_on:>14.1f} "
              f"{(cpu_on - cpu_off) / cpu_off:>7.1%}")
        print(f"{'':<13} tok/s off: {' '.join(f'{r:.1f}' for r, _ in off)}; "
              f"on: {' '.join(f'{r:.1f}' for r, _ in on)}")
    vocab = loaded.model.config.vocab_size
    print(f"recording alone: {hook_ms(vocab):.3f} ms per token ({vocab:,}-token vocabulary)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
