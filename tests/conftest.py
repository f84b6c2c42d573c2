"""Shared fixtures: a tiny random GPT-2 on disk and loaded, and the real default model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from repl.engine import GenerationRequest, GenerationStats, StreamItem
from repl.engine.base import Backend
from repl.models import ModelInfo
from tests.tiny_models import save_random_gpt2


@pytest.fixture(autouse=True)
def config_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every process it starts) remembers TUI settings in a folder of its own,
    never in the user's real config directory."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("TEXTGEN_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    from repl.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture
def tiny_generator(tiny_loaded):
    from repl.engine import Generator

    return Generator(tiny_loaded)


@pytest.fixture(scope="session")
def default_loaded():
    """The real SmolLM2-135M-Instruct (converted at set-up; loads in well under a second)."""
    from repl.models import load_model

    return load_model("default", device="cpu")


def _llama_backend(spec: str):
    """`spec` on the llama.cpp backend (skips where llama-cpp-python did not build)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup)")
    from repl.engine.llama import LlamaCppBackend

    return LlamaCppBackend.open(spec, threads=2)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dir: Path):
    """The tiny GPT-2, converted once to q8_0 by llama.cpp's converter, on llama.cpp."""
    return _llama_backend(str(tiny_model_dir))


@pytest.fixture(scope="session")
def default_llama():
    """The real default model's own Q4_1 gguf on llama.cpp."""
    return _llama_backend("default")


class _ScriptedTokenizer:
    """One token per character; its chat template writes `role: content` lines."""

    bos_token_id = None
    chat_template: str | None = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[ord(c) for c in text])

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True,
                            continue_final_message: bool = False, tokenize: bool = True):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        if continue_final_message:
            text = text.removesuffix("\n")
        elif add_generation_prompt:
            text += "assistant: "
        return [ord(c) for c in text] if tokenize else text


class ScriptedBackend(Backend):
    """A backend (the real `Backend` interface) that streams scripted chunks: UI tests drive
    the app with it instead of slowing a real model down with sleep hooks.

    With `hold=True` it stops after the first chunk until `release()` (or Esc's cancel), so a
    test can press keys while a generation is certainly running."""

    def __init__(self, chunks: list[str] | None = None, *, hold: bool = False,
                 chat: bool = True, context_length: int = 2048) -> None:
        super().__init__()
        self.chunks = list(chunks or ["Hello", " world", "."])
        self.hold = hold
        self.requests: list[GenerationRequest] = []  # every request streamed
        self.tokenizer = _ScriptedTokenizer()
        if not chat:
            self.tokenizer.chat_template = None
        self.info = ModelInfo(spec="scripted", name="scripted", parameters=0,
                              context_length=context_length, device="cpu", dtype="none",
                              has_chat_template=chat, backend="scripted")
        self._release = threading.Event()

    def release(self) -> None:
        self._release.set()

    def cancel(self) -> None:
        super().cancel()
        self._release.set()

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        self.requests.append(request)
        self._release.clear()
        started = time.perf_counter()
        ids, _ = self.encode(request)
        sent = 0
        for i, chunk in enumerate(self.chunks):
            if self._cancel.is_set():
                break
            yield chunk
            sent += 1
            if i == 0 and self.hold:
                self._release.wait()
        finish = "cancelled" if self._cancel.is_set() else "length"
        yield GenerationStats(prompt_tokens=len(ids), new_tokens=sent, ttft_s=0.0,
                              tokens_per_s=None, total_s=time.perf_counter() - started,
                              finish_reason=finish, seed=request.params.seed or 0,
                              engine="scripted")


@pytest.fixture
def scripted() -> type[ScriptedBackend]:
    """`scripted(chunks, hold=False, chat=True)` makes a ScriptedBackend."""
    return ScriptedBackend
