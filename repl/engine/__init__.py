"""The generation engine: a request goes in, a stream of text comes out.

`open_backend(spec)` picks the backend for a model spec and loads it; every backend has the
interface of `repl.engine.base.Backend`, so the faces never know which one runs:

- `llama.cpp` (repl/engine/llama.py): the fast CPU backend; gguf weights (the default model's
  own Q4_1 file, or a conversion cached under models/.cache/); no torch at run time.
- `transformers` (repl/engine/hf.py): plain `generate()`, the reference; any HF model; CUDA.

Nothing here imports torch, transformers or llama.cpp until a backend is opened.
"""

from __future__ import annotations

import os
from typing import Literal

from repl.engine.base import Backend
from repl.engine.hf import Generator, TransformersBackend
from repl.engine.request import (
    FinishReason,
    GenerationRequest,
    GenerationStats,
    Message,
    Notice,
    Progress,
    StopMatcher,
    StreamItem,
)

BackendChoice = Literal["auto", "llama.cpp", "transformers"]
BACKENDS: tuple[str, ...] = ("auto", "llama.cpp", "transformers")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendChoice",
    "FinishReason",
    "GenerationRequest",
    "GenerationStats",
    "Generator",
    "Message",
    "Notice",
    "Progress",
    "StopMatcher",
    "StreamItem",
    "TransformersBackend",
    "open_backend",
]


def open_backend(spec: str = "default", device: str | None = None, dtype: str | None = None,
                 backend: str = "auto", threads: int | None = None,
                 api_key: str | None = None) -> Backend:
    """Load `spec` on the backend asked for; `auto` takes llama.cpp on the CPU where it can
    serve the model, else transformers (and the model's info says why, for the status bar).
    A URL spec (`http://HOST:PORT/v1`, `...#MODEL`) drives that OpenAI-compatible server
    (repl/engine/remote.py), with `api_key` or $OPENAI_API_KEY.

    The one way every face loads a model, so device, dtype, backend and threads are never
    forgotten by one of them. Raises TextgenError with one clear line when it cannot.
    """
    from repl.errors import TextgenError

    if spec.startswith(("http://", "https://")):
        from repl.engine.remote import RemoteBackend

        return RemoteBackend.open(spec, api_key=api_key)
    if backend not in BACKENDS:
        raise TextgenError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    wants_gpu = bool(device and not device.startswith("cpu")) or (
        device is None and _has_nvidia_gpu())
    why_not = None
    if backend == "llama.cpp" or (backend == "auto" and not wants_gpu and dtype is None):
        from repl.engine import llama

        why_not = llama.unavailable_reason(spec)
        if why_not is None:
            return llama.LlamaCppBackend.open(spec, threads=threads)
        if backend == "llama.cpp":
            raise TextgenError(f"the llama.cpp backend cannot run {spec}: {why_not}.")
    from repl.models import load_model

    loaded = load_model(spec, device=device, dtype=dtype)
    if why_not:
        loaded.info = loaded.info.with_note(f"transformers: {why_not}")
    return TransformersBackend(loaded)


def _has_nvidia_gpu() -> bool:
    """Whether a CUDA device is likely, without importing torch (seconds) to ask."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
