"""How many threads a CPU generation should use: the cores no other process is running on.

llama.cpp's worker threads meet at a spinning barrier after every operation, so one thread that
the kernel has parked behind another process stalls all of them. On a shared 2-core machine
running other work, 2 threads decoded the default model at 0.8 tok/s where 1 thread got 12.2
(same minute, same gguf). So unless the user fixes `--threads`, each generation counts the
processes running right now and takes the cores they leave free (at least one).
"""

from __future__ import annotations

import os
import statistics
import time

SAMPLES = 3  # reads of /proc/loadavg, 1 ms apart: one read catches a passing spike


def usable_cores() -> int:
    """Every core this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def others_running() -> int | None:
    """Runnable threads of other processes now, or None where /proc is missing.

    /proc/loadavg's fourth field is "running/total" for the whole machine; this process's own
    running threads (the one reading, a UI thread) are counted from /proc/self/task and taken
    off, so textgen never yields cores to itself."""
    counts = []
    for i in range(SAMPLES):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - _own_running())
        if i + 1 < SAMPLES:
            time.sleep(0.001)
    return max(0, int(statistics.median(counts)))


def _own_running() -> int:
    """This process's threads in state R (running or runnable); at least 1, the caller."""
    running = 0
    for task in os.scandir("/proc/self/task"):
        try:
            with open(f"{task.path}/stat", encoding="ascii", errors="replace") as f:
                # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces)
                running += f.read().rpartition(")")[2].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, running)


def free_cores(cores: int | None = None) -> int:
    """The threads a generation should use now: the cores left by other running work, >= 1."""
    cores = cores or usable_cores()
    others = others_running()
    if others is None:
        return cores
    return max(1, min(cores, cores - others))
