"""Whether this CPU does bf16 arithmetic natively (what `--precision auto` picks bf16 for).

Intel AMX (`amx_bf16`, Sapphire Rapids on) and AVX512-BF16 (`avx512_bf16`, Cooper Lake,
Zen 4) run bf16 matmuls in hardware: on this project's Xeon a bf16 matmul is 3-8x an fp32 one.
Elsewhere torch emulates bf16 and it is slower than fp32, so auto keeps fp32 there. Linux
only (the flags come from /proc/cpuinfo); other systems report no native bf16.
"""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU listed (all cores of a machine share them)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)
