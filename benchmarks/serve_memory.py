"""Memory per served tab: `textgen serve` on a model, N tabs opened over websockets (as a browser
does), each tab used once (a prompt submitted and its completion awaited), then every process
measured with psutil: each tab's app and its children, the shared engine (`textgen api`, when
the tabs share one), and the server itself.

    .venv/bin/python benchmarks/serve_memory.py [--tabs 1 4] [--modes shared per-tab]
        [--model default] [-- more serve flags]

RSS counts shared pages in full; PSS splits them between the processes that share them (also
processes outside this run: another test run's torch); USS is what the process alone holds, what
ending it gives back. Prints a Markdown table, then one JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import time

import psutil

MB = 1 << 20
# What the status bar says once a tab's model is ready (what runs it), and after a generation.
READY = re.compile(r"cpu/|cuda|llama\.cpp [A-Z]|remote \d")
FINISHED = re.compile(r"last: (eos|length|stop)")
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_memory(pid: int) -> dict[str, float]:
    root = psutil.Process(pid)
    rss = pss = uss = 0
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        try:
            full = process.memory_full_info()
        except psutil.Error:
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
        uss += full.uss
    return {"rss_mb": round(rss / MB, 1), "pss_mb": round(pss / MB, 1),
            "uss_mb": round(uss / MB, 1), "processes": len(processes)}


class Tab:
    """One tab's websocket, read all the time (as a browser does: a websocket left unread
    misses the server's heartbeats and is closed), its screen text kept for waiting on."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen = ""
        self.changed = asyncio.Event()
        self.closed: str | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type.name == "BINARY":
                self.seen += ESCAPES.sub("", message.data.decode("utf-8", "replace"))
                self.seen = self.seen[-20000:]
                self.changed.set()
        self.closed = f"closed: {self.ws.close_code}"
        self.changed.set()

    async def until(self, pattern: re.Pattern[str], limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not pattern.search(self.seen[-4000:]):
            if self.closed:
                raise SystemExit(f"the tab closed waiting for {pattern.pattern!r}: "
                                 f"{self.closed}")
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(1.0, deadline - time.monotonic()))


async def open_tab(client, url: str, limit_s: float) -> Tab:
    """A tab, once its model is ready and it has generated once (as a person would use it)."""
    tab = Tab(await client.ws_connect(url))
    await tab.until(READY, limit_s)
    await tab.ws.send_json(["stdin", "The river"])
    await tab.ws.send_json(["stdin", "\r"])
    await tab.until(FINISHED, limit_s)
    return tab


def _children(server: subprocess.Popen) -> tuple[list[psutil.Process], list[psutil.Process]]:
    apps, engines = [], []
    for child in psutil.Process(server.pid).children():
        command = child.cmdline()
        if "--tui" in command:
            apps.append(child)
        elif "api" in command:
            engines.append(child)
    return apps, engines


async def measure(model: str, tabs: int, per_tab: bool, flags: list[str],
                  limit_s: float) -> dict:
    from aiohttp import ClientSession

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "repl", "serve", "--port", str(port), "--model", model,
         "--max-sessions", str(tabs), "--max-new-tokens", "16",
         *(["--engine-per-tab"] if per_tab else []), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while "token=" not in (line := server.stdout.readline()):
            if not line:
                raise SystemExit("textgen serve exited: " + "".join(lines))
            lines.append(line)
        token = re.search(r"token=(\S+)", line).group(1)
        url = f"ws://127.0.0.1:{port}/ws?token={token}&width=120&height=40"
        async with ClientSession() as client:
            opened = [await open_tab(client, url, limit_s) for _ in range(tabs)]
            apps, engines = _children(server)
            assert len(apps) == tabs, f"{len(apps)} tab apps for {tabs} tabs"
            result = {
                "model": model, "mode": "engine per tab" if per_tab else "shared engine",
                "tabs": [tree_memory(app.pid) for app in apps],
                "engine": tree_memory(engines[0].pid) if engines else None,
                "server_rss_mb": round(psutil.Process(server.pid).memory_info().rss / MB, 1),
            }
            for tab in opened:
                await tab.ws.close()
        result["all_pss_mb"] = round(
            sum(t["pss_mb"] for t in result["tabs"])
            + (result["engine"]["pss_mb"] if result["engine"] else 0)
            + psutil.Process(server.pid).memory_full_info().pss / MB, 1)
        return result
    finally:
        server.terminate()
        server.wait(timeout=120)


def table(results: list[dict]) -> str:
    rows = ["| mode | tabs | a tab: USS / PSS / RSS (MB) | engine: USS / PSS / RSS (MB) | "
            "all processes PSS (MB) |", "|---|---|---|---|---|"]

    def mean(tabs: list[dict], key: str) -> float:
        return sum(t[key] for t in tabs) / len(tabs)

    for r in results:
        tabs = r["tabs"]
        tab = " / ".join(f"{mean(tabs, k):.0f}" for k in ("uss_mb", "pss_mb", "rss_mb"))
        engine = (" / ".join(f"{r['engine'][k]:.0f}" for k in ("uss_mb", "pss_mb", "rss_mb"))
                  if r["engine"] else "-")
        rows.append(f"| {r['mode']} | {len(tabs)} | {tab} | {engine} | {r['all_pss_mb']:.0f} |")
    by_mode: dict[str, list[dict]] = {}
    for r in results:
        by_mode.setdefault(r["mode"], []).append(r)
    for mode, runs in by_mode.items():
        runs.sort(key=lambda r: len(r["tabs"]))
        if len(runs) > 1 and len(runs[-1]["tabs"]) > len(runs[0]["tabs"]):
            extra = (_held(runs[-1]) - _held(runs[0])) / (
                len(runs[-1]["tabs"]) - len(runs[0]["tabs"]))
            rows.append(f"\n{mode}: one more tab costs {extra:.0f} MB (the growth of what the "
                        "tabs and the engine alone hold, USS)")
    return "\n".join(rows)


def _held(run: dict) -> float:
    return sum(t["uss_mb"] for t in run["tabs"]) + (run["engine"]["uss_mb"] if run["engine"]
                                                     else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", choices=["shared", "per-tab"],
                        default=["per-tab", "shared"])
    parser.add_argument("--model", default="default")
    parser.add_argument("--limit-s", type=float, default=900.0,
                        help="for one tab to load and answer (a loaded machine is slow)")
    parser.add_argument("serve_flags", nargs="*", help="more `textgen serve` flags, after --")
    args = parser.parse_args()
    results = []
    for mode in args.modes:
        for tabs in args.tabs:
            results.append(asyncio.run(measure(args.model, tabs, mode == "per-tab",
                                               args.serve_flags, args.limit_s)))
    print(table(results))
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
