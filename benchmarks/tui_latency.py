"""TUI latency: time from `textgen` to a visible screen, and the longest UI stall while the model
loads and during a 300-token generation, in a real terminal (tmux).

    .venv/bin/python benchmarks/tui_latency.py [--runs 3] [--new-tokens 300] [--model default]
                                               [--chat] [--no-startup]

Start-up: tmux runs the real `textgen` command; capture-pane is polled every 10 ms until the
status bar is drawn ("first screen") and until it names the loaded model ("model ready").

Stalls: tmux runs this script again as a child that drives the real app (real terminal driver,
real rendering) with a 5 ms probe timer on the UI's event loop; a stall is the longest gap
between two probe ticks beyond the 5 ms period, i.e. the longest time the UI could not react to
a key. EOS is switched off for the run so the generation is exactly --new-tokens long. --chat
runs it in chat mode, with a prompt that asks for code and a list, so the reply streams into
the Markdown view; --no-startup measures the stalls and the engine alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

PROBE_S = 0.005
PROMPT = "The history of climate change research began"
CHAT_PROMPT = ("Write a Python function that parses a CSV file, in a code block, then a bulleted "
               "list of notes with some **bold** words and `inline code`.")
ROOT = Path(__file__).resolve().parent.parent
TEXTGEN = Path(sys.executable).parent / "textgen"


def tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True)


def startup_run(model: str, sessions: Path) -> tuple[float, float]:
    """Seconds from launching `textgen` to its first screen, and to the model being ready."""
    socket = f"tui-latency-{time.monotonic_ns()}"
    command = f"env TEXTGEN_SESSIONS_DIR={sessions} {TEXTGEN} --model {model}"
    started = time.perf_counter()
    tmux(socket, "new-session", "-d", "-s", "b", "-x", "120", "-y", "35", command)
    first = ready = None
    screen = ""
    try:
        while ready is None and time.perf_counter() - started < 300:
            capture = tmux(socket, "capture-pane", "-p", "-t", "b")
            if capture.returncode != 0:
                raise SystemExit(f"textgen exited before it was ready; last screen:\n{screen}")
            screen = capture.stdout
            status = next((line for line in screen.splitlines() if "tok/s" in line), "")
            now = time.perf_counter() - started
            if status and first is None:
                first = now
            if status and "loading model" not in status:
                ready = now
            time.sleep(0.01)
    finally:
        tmux(socket, "kill-server")
    if first is None or ready is None:
        raise SystemExit(f"textgen did not get ready within 300 s; its screen:\n{screen}")
    return first, ready


def stall_run(model: str, new_tokens: int, chat: bool = False) -> dict[str, float]:
    """Run the child in tmux and read back what it measured."""
    socket = f"tui-latency-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = (f"{sys.executable} {Path(__file__).resolve()} --child {out} "
                   f"--model {model} --new-tokens {new_tokens} --sessions-dir {tmp}"
                   + (" --chat" if chat else ""))
        tmux(socket, "new-session", "-d", "-s", "b", "-x", "120", "-y", "35", command)
        try:
            deadline = time.monotonic() + 1800
            while not out.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("the stall run did not finish in 30 minutes")
                if tmux(socket, "has-session", "-t", "b").returncode != 0:
                    raise SystemExit("the stall run exited without a result")
                time.sleep(0.5)
            time.sleep(0.2)
            return json.loads(out.read_text())
        finally:
            tmux(socket, "kill-server")


def no_eos(generator) -> None:
    """Make the generation exactly N tokens long, on either backend."""
    if hasattr(generator, "model"):  # transformers
        generator.model.generation_config.eos_token_id = None
    else:  # llama.cpp
        generator.eos = set()


def engine_run(model: str, new_tokens: int, runs: int) -> float:
    """The same generation (prompt, parameters, seed, no EOS) through the engine alone, no UI:
    median decode tokens/s of `runs`."""
    from repl.engine import GenerationRequest, open_backend
    from repl.params import SamplingParams

    generator = open_backend(model)
    no_eos(generator)
    request = GenerationRequest(PROMPT, SamplingParams(max_new_tokens=new_tokens, seed=1))
    speeds = [generator.generate(request)[1].tokens_per_s or 0.0 for _ in range(runs)]
    return statistics.median(speeds)


def child(args: argparse.Namespace) -> int:
    """Inside tmux: the real app with a probe timer; submits one prompt, then quits."""
    from repl.params import SamplingParams
    from repl.tui.app import TextgenApp

    class ProbedApp(TextgenApp):
        def on_mount(self) -> None:  # runs after TextgenApp.on_mount (Textual calls both)
            self.phase = "load"
            self.gaps: dict[str, list[float]] = {"load": [], "generate": []}
            self.worst_at = (0.0, 0.0)  # (gap, seconds into the generation)
            self.generate_started = 0.0
            self.last_tick = time.perf_counter()
            self.set_interval(PROBE_S, self.probe)

        def probe(self) -> None:
            now = time.perf_counter()
            if self.phase in self.gaps:
                gap = now - self.last_tick - PROBE_S
                self.gaps[self.phase].append(gap)
                if self.phase == "generate" and gap > self.worst_at[0]:
                    self.worst_at = (gap, self.last_tick - self.generate_started)
            self.last_tick = now
            generator = self.conversation.generator
            if self.phase == "load" and generator is not None:
                no_eos(generator)  # exactly N tokens
                self.phase = "wait"
                self.prompt.text = CHAT_PROMPT if args.chat else PROMPT
                self.prompt.action_submit()
            elif self.phase == "wait" and self.job is not None:
                self.phase = "generate"
                self.generate_started = now
            elif self.phase == "generate" and self.job is None:
                self.phase = "done"
                self.finish()

        def finish(self) -> None:
            turn = self.conversation.session.turns[-1]
            stats = turn.completion.stats if turn.completion else None
            gaps = self.gaps
            result = {
                "load_max_stall_ms": max(gaps["load"], default=0) * 1000,
                "gen_max_stall_ms": max(gaps["generate"], default=0) * 1000,
                "gen_p99_stall_ms": (statistics.quantiles(gaps["generate"], n=100)[98] * 1000
                                     if len(gaps["generate"]) >= 100 else 0.0),
                "gen_ticks": len(gaps["generate"]),
                "gen_max_stall_at_s": self.worst_at[1],
                "new_tokens": stats.new_tokens if stats else 0,
                "tokens_per_s": (stats.tokens_per_s or 0.0) if stats else 0.0,
                "finish": stats.finish_reason if stats else "none",
            }
            Path(args.child).write_text(json.dumps(result))
            self.exit(0)

    params = SamplingParams(max_new_tokens=args.new_tokens, seed=1)
    ProbedApp(args.model, params=params, sessions_dir=Path(args.sessions_dir),
              mode="chat" if args.chat else "complete").run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="start-up and engine runs (median reported); 0: the stalls only")
    parser.add_argument("--new-tokens", type=int, default=300)
    parser.add_argument("--model", default="default")
    parser.add_argument("--chat", action="store_true",
                        help="chat mode, a prompt that asks for Markdown (code, a list)")
    parser.add_argument("--no-startup", action="store_true",
                        help="skip the start-up runs (stalls and engine speed only)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sessions-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed: apt-get install -y tmux")
    rows = []
    if not args.no_startup and args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            runs = [startup_run(args.model, Path(tmp)) for _ in range(args.runs)]
        first = statistics.median(r[0] for r in runs)
        ready = statistics.median(r[1] for r in runs)
        rows += [("`textgen` -> first screen (loading model)", f"{first * 1000:.0f} ms"),
                 ("`textgen` -> model ready", f"{ready * 1000:.0f} ms")]
    stalls = stall_run(args.model, args.new_tokens, args.chat)
    engine = engine_run(args.model, args.new_tokens, args.runs) if args.runs else 0.0
    rows += [
        ("longest UI stall while the model loads", f"{stalls['load_max_stall_ms']:.0f} ms"),
        (f"longest UI stall, {stalls['new_tokens']}-token generation",
         f"{stalls['gen_max_stall_ms']:.0f} ms (at {stalls['gen_max_stall_at_s']:.1f} s)"),
        ("99th percentile UI stall, same generation", f"{stalls['gen_p99_stall_ms']:.0f} ms"),
        ("decode speed during that generation (TUI)", f"{stalls['tokens_per_s']:.1f} tok/s"),
        ("same generation, engine alone, no UI (median)",
         f"{engine:.1f} tok/s" if engine else "-"),
        ("TUI / engine", f"{stalls['tokens_per_s'] / engine:.3f}" if engine else "-"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"TUI latency · model {args.model} · {'chat' if args.chat else 'complete'} mode · "
          f"median of {args.runs} runs · {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  -------")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
