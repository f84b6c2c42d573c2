"""textgen's URL backend against a server not written here: llama-cpp-python's OpenAI server.

Starts `python -m llama_cpp.server` on a free loopback port with the default model's own gguf,
waits until `GET /v1/models` answers, then drives it the way the faces do, through
`open_backend("http://127.0.0.1:PORT/v1")`: a streamed completion, a streamed chat, the same
seed twice, a stop string, inspect mode (logprobs into a TokenTrace), a wrong model name, and
the server killed mid-reply. Prints one line per check and exits 1 if any failed.

Needs llama-cpp-python with its server extras in the same environment:
    pip install 'llama-cpp-python[server]'   (or a built wheel, plus uvicorn, fastapi,
    sse-starlette, starlette-context, pydantic-settings)
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repl.engine import GenerationRequest, GenerationStats, Notice, open_backend
from repl.errors import TextgenError
from repl.models import default_gguf_path
from repl.params import SamplingParams
from repl.token_probs import TokenTrace

READY_LIMIT_S = 600.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(gguf: Path, port: int, threads: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
         "--model_alias", "smollm2", "--chat_format", "chatml"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_LIMIT_S
    while True:  # readiness: /v1/models answers (polled, with a generous limit)
        if process.poll() is not None:
            raise SystemExit("llama_cpp.server exited: " + (process.stderr.read()[-2000:]
                                                            if process.stderr else ""))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit("llama_cpp.server did not answer in time") from None
            time.sleep(0.5)


def collect(backend, request: GenerationRequest) -> tuple[str, GenerationStats, list[str]]:
    text, notices, stats = [], [], None
    for item in backend.stream(request):
        if isinstance(item, str):
            text.append(item)
        elif isinstance(item, Notice):
            notices.append(item.message)
        elif isinstance(item, GenerationStats):
            stats = item
    assert stats is not None
    return "".join(text), stats, notices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]'")
        return 2
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    print(f"llama-cpp-python {llama_cpp.__version__} server at {url}, "
          f"model {default_gguf_path().name}")
    server = start_server(default_gguf_path(), port, args.threads)
    failures = 0

    def check(name: str, run: Callable[[], str]) -> None:
        nonlocal failures
        try:
            print(f"ok    {name}: {run()}")
        except Exception as exc:  # a report, not a crash: every check gets its line
            failures += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}")

    try:
        backend = open_backend(url)
        print(f"opened: {backend.info.summary()}")
        seeded = SamplingParams(max_new_tokens=24, temperature=0.8, seed=7)

        def completion() -> str:
            text, stats, _ = collect(backend, GenerationRequest(
                prompt="The history of the printing press", params=seeded))
            assert text.strip(), "no text"
            return f"{stats.summary()} | {text[:60]!r}"

        def same_seed() -> str:
            request = GenerationRequest(prompt="Once upon a time", params=seeded)
            first, _, _ = collect(backend, request)
            second, _, _ = collect(backend, request)
            other, _, _ = collect(backend, GenerationRequest(
                prompt="Once upon a time", params=seeded.replace(seed=8)))
            assert first == second, f"{first!r} != {second!r}"
            return f"seed 7 twice identical ({len(first)} chars); seed 8 " + \
                ("differs" if other != first else "is the same")

        def chat() -> str:
            text, stats, _ = collect(backend, GenerationRequest.chat(
                [{"role": "user", "content": "Name three colours."}], seeded))
            assert text.strip(), "no text"
            return f"{stats.summary()} | {text[:60]!r}"

        def stop() -> str:
            greedy = SamplingParams(max_new_tokens=30, temperature=0, repetition_penalty=1.0)
            free, _, _ = collect(backend, GenerationRequest(prompt="Count: 1, 2, 3,",
                                                            params=greedy))
            word = free.strip().split()[2] if len(free.split()) > 2 else free[:3]
            cut, stats, _ = collect(backend, GenerationRequest(
                prompt="Count: 1, 2, 3,", params=greedy.replace(stop=(word,))))
            assert word not in cut and free.startswith(cut), f"{cut!r} vs {free!r}"
            return f"stop {word!r}: {cut!r} ({stats.finish_reason})"

        def inspect() -> str:
            trace = TokenTrace()
            text, _, notices = collect(backend, GenerationRequest(
                prompt="The capital of France is", trace=trace,
                params=SamplingParams(max_new_tokens=8, temperature=0)))
            steps = trace.snapshot()
            if not steps:
                return f"no logprobs from this server; the faces say: {notices}"
            assert backend.tokenizer.decode(trace.ids) == text, "token texts do not add up"
            first = steps[0]
            return (f"{len(steps)} tokens with probabilities, first {first.prob:.1%} with "
                    f"{len(first.top_ids)} alternatives")

        def wrong_model() -> str:
            try:
                open_backend(url + "#no-such-model")
            except TextgenError as exc:
                return f"one line: {exc}"
            return "accepted (this server ignores the model name)"

        def killed() -> str:
            received = []
            try:
                for item in backend.stream(GenerationRequest(
                        prompt="Write a long essay about rivers.",
                        params=SamplingParams(max_new_tokens=400, seed=1))):
                    if isinstance(item, str):
                        received.append(item)
                        if len(received) == 2:
                            server.send_signal(signal.SIGKILL)
            except TextgenError as exc:
                assert received, "nothing arrived before the error"
                return f"{len(received)} chunks kept, then: {exc}"
            raise AssertionError("the stream ended without an error")

        for name, run in (("streamed completion", completion), ("same seed", same_seed),
                          ("streamed chat", chat), ("stop string", stop),
                          ("inspect (logprobs)", inspect), ("unknown model", wrong_model),
                          ("server killed mid-reply", killed)):
            check(name, run)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    print(f"{failures} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
