"""Live `textgen api` servers for tests and benchmarks: a subprocess on a free loopback port,
ready when it prints its URL; and a tiny model that has a chat template."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300.0  # a loaded 2-core machine takes a while to import torch
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def add_chat_template(model_dir: Path, target: Path) -> Path:
    """A copy of a tiny model directory whose tokenizer has a (made-up) chat template."""
    from transformers import AutoTokenizer

    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)
    return target


@dataclass
class LiveServer:
    process: subprocess.Popen
    url: str
    lines: list[str] = field(default_factory=list)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def start_api(*argv: str, env: dict[str, str] | None = None) -> LiveServer:
    """`textgen api --port 0 ARGV...`, returned once it prints the URL it serves at."""
    process = subprocess.Popen(
        [sys.executable, "-m", "repl", "api", "--port", "0", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            process.kill()
            raise RuntimeError("textgen api did not start: " + "".join(seen)) from None
        if line is None:
            raise RuntimeError("textgen api exited: " + "".join(seen))
        if line.startswith("textgen api: serving"):
            url = line.split(" at ", 1)[1].split()[0]
            return LiveServer(process, url, seen)
