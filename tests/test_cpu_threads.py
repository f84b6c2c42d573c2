"""repl/engine/cpu.py: a generation takes the cores other processes leave free."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from repl.engine import cpu


def test_free_cores_leaves_the_cores_others_run_on(monkeypatch):
    for others, want in ((0, 4), (1, 3), (3, 1), (9, 1)):
        monkeypatch.setattr(cpu, "others_running", lambda n=others: n)
        assert cpu.free_cores(4) == want
    monkeypatch.setattr(cpu, "others_running", lambda: None)  # no /proc: every core
    assert cpu.free_cores(4) == 4


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_own_threads_are_not_counted_as_others():
    # Two threads of this process hashing (hashlib lets go of the GIL on big buffers, so they
    # stay runnable): they are this process's own, so they take no core from its generation.
    stop = threading.Event()
    data = bytes(1 << 22)

    def spin():
        while not stop.is_set():
            hashlib.sha256(data).digest()

    before = cpu._own_running()
    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for t in spinners:
        t.start()
    try:
        seen = max(cpu._own_running() for _ in range(50))
        assert seen >= before + 1
        assert cpu.others_running() is not None
    finally:
        stop.set()
        for t in spinners:
            t.join()
