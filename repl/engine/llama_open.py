"""Open a gguf with llama-cpp-python, without the AMX kernels that crash it on some Xeons.

On Sapphire-Rapids-class CPUs a `GGML_NATIVE` build of llama.cpp compiles its AMX backend and
puts the weights in an AMX buffer; the first decode then segfaults in `ggml_backend_amx_mul_mat`
on some of those machines (llama.cpp #20824, closed without a fix; dspy #10079 hit it too). It
did here: `textgen generate` died with SIGSEGV on an `AMX_INT8 = 1` machine. Turning off
llama.cpp's extra buffer types (AMX and weight repacking) avoids that path; with it off the
default Q8_0 model runs on llamafile's sgemm as it does on CPUs without AMX (x86 repacks only
Q4_0 / IQ4_NL / Q4_K, so a Q8_0 model loses nothing). Only CPUs whose build reports AMX pay it.

llama-cpp-python's `Llama()` builds its model parameters inside its constructor and exposes no
`use_extra_bufts` argument, so the default-parameters function it calls is wrapped for the
duration of the call (under a lock: two threads opening models at once see the same wrapper).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from repl.errors import TextgenError

_OPEN_LOCK = threading.Lock()


@functools.cache
def build_has_amx() -> bool:
    """Whether this llama.cpp build runs AMX kernels on this CPU (its system info says so)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


def open_llama(path: str | Path, **kwargs: Any) -> Any:
    """`llama_cpp.Llama(path, **kwargs)`, with extra buffer types off where AMX would run."""
    try:  # an optional runtime: the backend only comes here once it has found it
        import llama_cpp
        import llama_cpp.llama as llama_module
    except ImportError as exc:
        raise TextgenError("llama.cpp is not installed (make setup installs it)") from exc

    if not build_has_amx():
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    low_level = llama_module.llama_cpp  # the ctypes module Llama() takes its defaults from
    with _OPEN_LOCK:
        defaults = low_level.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            low_level.llama_model_default_params = defaults
