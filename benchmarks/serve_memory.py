"""Memory per served tab: `textgen serve` on a model, N tabs opened over websockets (as a browser
does), and each tab's process tree measured with psutil once its model has loaded and run
its warm-up generation (the status bar then names its device).

    .venv/bin/python benchmarks/serve_memory.py [--tabs 3] [--model default] [-- serve flags]

Per tab: RSS (resident, counting shared pages in full) and PSS (shared pages split between the
processes sharing them: what one more tab really costs) of the tab's app and its children; and
the server's own RSS. Prints one JSON line.
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_memory(pid: int) -> dict[str, float]:
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = pss = 0
    for process in processes:
        try:
            full = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
    return {"rss_mb": round(rss / MB, 1), "pss_mb": round(pss / MB, 1),
            "processes": len(processes)}


async def open_tab(client, url: str, limit_s: float):
    """A tab: its websocket, once the app shows the loaded model's device in its status bar."""
    ws = await client.ws_connect(url)
    seen = ""
    deadline = time.monotonic() + limit_s
    while "cpu/" not in seen and "cuda/" not in seen:
        message = await ws.receive(timeout=max(1.0, deadline - time.monotonic()))
        if message.type.name != "BINARY":
            raise SystemExit(f"the tab closed before its model loaded: {message}")
        seen += re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", message.data.decode("utf-8", "replace"))
    return ws


async def main_async(args: argparse.Namespace) -> dict:
    from aiohttp import ClientSession

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "repl", "serve", "--port", str(port), "--model", args.model,
         "--max-sessions", str(args.tabs), *args.serve_flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = server.stdout.readline()
        token = re.search(r"token=(\S+)", banner)
        if token is None:
            raise SystemExit(f"no URL from textgen serve: {banner}{server.stdout.read()}")
        url = f"ws://127.0.0.1:{port}/ws?token={token.group(1)}&width=120&height=40"
        result = {"model": args.model, "tabs": []}
        async with ClientSession() as client:
            tabs = []
            for _ in range(args.tabs):
                tabs.append(await open_tab(client, url, args.limit_s))
                await asyncio.sleep(args.settle_s)
                apps = [p for p in psutil.Process(server.pid).children()
                        if "--tui" in p.cmdline()]
                newest = max(apps, key=lambda p: p.create_time())
                result["tabs"].append(tree_memory(newest.pid))
            result["server_rss_mb"] = round(psutil.Process(server.pid).memory_info().rss / MB, 1)
            result["all_tabs_pss_mb"] = round(sum(t["pss_mb"] for t in result["tabs"]), 1)
            for ws in tabs:
                await ws.close()
        return result
    finally:
        server.terminate()
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--settle-s", type=float, default=5.0,
                        help="after a tab is ready, before measuring (its warm-up finishes)")
    parser.add_argument("--limit-s", type=float, default=900.0)
    parser.add_argument("serve_flags", nargs="*", help="more `textgen serve` flags, after --")
    print(json.dumps(asyncio.run(main_async(parser.parse_args()))))


if __name__ == "__main__":
    main()
