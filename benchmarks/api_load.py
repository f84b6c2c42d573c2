"""Load on `textgen api`: N concurrent streaming clients (the official openai client).

Starts `textgen api` on a free loopback port (or uses --url), then for each client count runs
that many streaming completions at once and reports aggregate tok/s (all tokens / wall time),
per-stream tok/s (a stream's tokens after its first / the time since its first), p50/p99 time
to first token, and errors (429s counted apart). The engine runs one generation at a time, so
TTFT grows with the queue; errors must be 0 while clients <= --max-queue + 1.

    .venv/bin/python benchmarks/api_load.py                # the default model, 1, 4, 16
    .venv/bin/python benchmarks/api_load.py --clients 1,4,16,40 --max-queue 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai

from tests.live_api import start_api


@dataclass
class Result:
    ttft_s: float | None = None
    tokens: int = 0
    stream_s: float = 0.0
    error: str | None = None


def one_stream(client: openai.OpenAI, model: str, tokens: int, seed: int) -> Result:
    result = Result()
    started = time.perf_counter()
    first = None
    try:
        stream = client.completions.create(
            model=model, prompt="The history of the printing press", max_tokens=tokens,
            temperature=0.8, seed=seed, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                result.tokens = chunk.usage.completion_tokens
    except openai.RateLimitError:
        result.error = "429"
        return result
    except openai.OpenAIError as exc:
        result.error = type(exc).__name__
        return result
    end = time.perf_counter()
    if first is not None:
        result.ttft_s = first - started
        result.stream_s = end - first
    return result


def run_level(url: str, model: str, clients: int, tokens: int) -> tuple[list[Result], float]:
    results: list[Result] = [Result() for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def client_thread(i: int) -> None:
        with openai.OpenAI(base_url=url, api_key="bench", max_retries=0,
                           timeout=3600) as client:
            barrier.wait()
            results[i] = one_stream(client, model, tokens, seed=i)

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(clients: int, results: list[Result], wall: float) -> str:
    ok = [r for r in results if r.error is None]
    limited = sum(r.error == "429" for r in results)
    errors = sum(r.error is not None and r.error != "429" for r in results)
    total = sum(r.tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    per_stream = [(r.tokens - 1) / r.stream_s for r in ok if r.stream_s > 0 and r.tokens > 1]
    fmt = (lambda v: f"{v:.2f}") if ttfts else (lambda v: "-")
    return (f"| {clients} | {len(ok)} | {errors} | {limited} | {total / wall:.1f} | "
            f"{statistics.median(per_stream) if per_stream else 0:.1f} | "
            f"{fmt(percentile(ttfts, 0.5) if ttfts else 0)} | "
            f"{fmt(percentile(ttfts, 0.99) if ttfts else 0)} | {wall:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--url", help="an already running server (skips starting one)")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--max-queue", type=int, default=32)
    args = parser.parse_args()
    live = None
    url = args.url
    if url is None:
        live = start_api("--model", args.model, "--backend", args.backend,
                         "--max-queue", str(args.max_queue))
        url = live.url
        print(live.lines[-1].strip())
    try:
        with openai.OpenAI(base_url=url, api_key="bench", max_retries=0) as client:
            model = client.models.list().data[0].id
            one_stream(client, model, 4, seed=0)  # warm up: first-call set-up off the clock
        print(f"\n{model}, {args.tokens} tokens a request, queue bound {args.max_queue}, "
              "one generation at a time (no batching)\n")
        print("| clients | ok | errors | 429 | aggregate tok/s | per-stream tok/s (median) | "
              "TTFT p50 s | TTFT p99 s | wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for clients in (int(c) for c in args.clients.split(",")):
            results, wall = run_level(url, model, clients, args.tokens)
            print(row(clients, results, wall), flush=True)
    finally:
        if live is not None:
            live.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
