"""What the llama.cpp backend runs a model spec from: a gguf file and a tokenizer folder.

- `default` and `.gguf` specs run their gguf file as it is, except a format llama.cpp has no
  fast batched kernel for on x86 (Q4_1, the default model's): that one is re-quantized once to
  Q8_0 by llama.cpp's own quantizer. Q8_0 has one (llamafile's sgemm): the default model
  prefills 2.2x and decodes 1.3x faster per core, and its perplexity is *closer* to the fp32
  weights (+0.36% against Q4_1's +0.65%: Q8_0's step is ~1/17 of Q4_1's, and it keeps
  llama.cpp from quantizing activations to Q8_1). The tokenizer (tokenizer.json, chat template)
  is written once by transformers' gguf reader into the same cache folder.
- A `save_pretrained` folder (what `textgen-train` saves, GPT-2 and Llama families) is converted
  once to a q8_0 gguf by llama.cpp's own converter, `convert_hf_to_gguf.py` (installed beside
  the runtime by `make setup`); its tokenizer is the folder's own.

Conversions live under `<cache>/gguf/<key>/`, where the key is a hash of the source files'
bytes: a retrained model gets a new conversion, an unchanged one is never converted twice, and
an interrupted conversion leaves nothing behind (it is written to a temporary folder and
renamed). A small index maps each source file's (size, mtime) to its hash, so a start does not
re-read hundreds of megabytes to find its conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from repl.errors import TextgenError

# Bump when what a conversion writes changes, so stale caches are rebuilt rather than trusted.
CONVERSION_VERSION = "1"
CONVERTED_FORMAT = "q8_0"  # 8-bit blocks: within 0.1% of fp32 perplexity, half of f16's bytes
# gguf weight formats re-quantized to Q8_0 (llama_ftype values: 3 = Q4_1), measured in
# benchmarks/NOTES.md; every other format runs as it is.
REQUANTIZED = {3: "Q4_1"}
REQUANTIZE_TO = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
# Families llama.cpp's converter and runtime both take (config.json's model_type).
CONVERTIBLE = frozenset({
    "gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3",
    "gpt_neox", "falcon", "starcoder2", "stablelm", "olmo", "smollm3",
})
SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")


@dataclass(frozen=True)
class GgufModel:
    gguf: Path
    tokenizer_dir: Path
    name: str
    # The safetensors folder the gguf was made from, when there is one (torch's long-prompt
    # prefill, repl/engine/long_prefill.py, loads it).
    source_dir: Path | None = None


class NotConvertible(Exception):
    """This spec cannot run on llama.cpp; the message says why (shown in the status bar)."""


def cache_root() -> Path:
    from repl.paths import cache_dir

    return cache_dir() / "gguf"


def converter_script() -> Path | None:
    """llama.cpp's `convert_hf_to_gguf.py`: $TEXTGEN_LLAMA_CONVERTER, else where `make setup`
    unpacks it beside the runtime (`<venv>/share/llama.cpp/`)."""
    if env := os.environ.get("TEXTGEN_LLAMA_CONVERTER"):
        return Path(env)
    path = Path(sys.prefix) / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
    return path if path.is_file() else None


def gguf_model(spec: str, *, convert: bool = True) -> GgufModel:
    """The gguf and tokenizer for `spec`, converting once if needed (`convert=False` only
    checks that it could); NotConvertible with the reason when llama.cpp cannot take it."""
    from repl.models import DEFAULT_NAME, default_gguf_path, default_model_path, resolve_spec

    kind, where = resolve_spec(spec)
    if kind == "hub":
        raise NotConvertible("hub models run on transformers")
    if kind == "adapter":  # base + LoRA merged at load time: transformers does that
        raise NotConvertible("a LoRA adapter folder runs on transformers (its base + the "
                             "adapter)")
    if kind in ("default", "gguf"):
        gguf = default_gguf_path() if kind == "default" else Path(where)
        name = DEFAULT_NAME if kind == "default" else gguf.stem
        prepared = _cached("gguf", [gguf], convert,
                           lambda staging: _prepare_gguf(gguf, staging), check="tokenizer.json")
        requantized = prepared / "model.gguf"
        return GgufModel(requantized if requantized.is_file() else gguf, prepared, name,
                         default_model_path() if kind == "default" else None)
    folder = Path(where)
    config = json.loads((folder / "config.json").read_text("utf-8"))
    model_type = config.get("model_type", "?")
    if model_type not in CONVERTIBLE:
        raise NotConvertible(f"llama.cpp does not run {model_type!r} models")
    if not (folder / "tokenizer.json").is_file():
        raise NotConvertible("the folder has no fast tokenizer (tokenizer.json)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise NotConvertible("the folder has no safetensors weights")
    script = converter_script()
    if script is None:
        raise NotConvertible("llama.cpp's converter is not installed (make setup installs it)")
    sources = weights + [folder / f for f in SOURCE_FILES if (folder / f).is_file()]
    converted = _cached(
        "model", sources, convert,
        lambda staging: _run_converter(script, folder, staging / "model.gguf"),
        check="model.gguf")
    return GgufModel(converted / "model.gguf", folder, folder.resolve().name, folder)


def _cached(kind: str, sources: list[Path], convert: bool,
            build: Callable[[Path], None], check: str) -> Path:
    """The cache folder for `sources`, built by `build(staging)` the first time."""
    target = cache_root() / f"{kind}-{content_key(sources)}"
    if (target / check).is_file():
        return target
    if not convert:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def content_key(files: list[Path]) -> str:
    """A hash of the files' names and bytes (and the conversion version)."""
    digest = hashlib.sha256(f"textgen-gguf-v{CONVERSION_VERSION}".encode())
    for file in sorted(files, key=lambda f: f.name):
        digest.update(file.name.encode() + b"\0" + _file_hash(file).encode())
    return digest.hexdigest()[:20]


def _file_hash(file: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in the cache's index."""
    stat = file.stat()
    index_file = cache_root() / "hashes.json"
    try:
        index = json.loads(index_file.read_text("utf-8"))
    except (OSError, ValueError):
        index = {}
    signature = f"{stat.st_size}:{stat.st_mtime_ns}"
    entry = index.get(str(file.resolve()))
    if isinstance(entry, dict) and entry.get("signature") == signature:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    index[str(file.resolve())] = {"signature": signature, "sha256": digest.hexdigest()}
    from repl.session import atomic_write

    index_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(index_file, json.dumps(index, indent=0).encode("utf-8"))
    return digest.hexdigest()


def _prepare_gguf(gguf: Path, staging: Path) -> None:
    """The gguf's tokenizer, and its Q8_0 re-quantization where its format is in REQUANTIZED."""
    _write_gguf_tokenizer(gguf, staging)
    file_type = gguf_file_type(gguf)
    if file_type in REQUANTIZED:
        print(f"textgen: re-quantizing {gguf.name} from {REQUANTIZED[file_type]} to Q8_0 for "
              "fast prefill (once)...", file=sys.stderr)
        _requantize(gguf, staging / "model.gguf")


def gguf_file_type(gguf: Path) -> int | None:
    """general.file_type (a llama_ftype) from the gguf's header, None when it has none."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).get_field("general.file_type")
    return int(field.contents()) if field is not None else None


def _requantize(gguf: Path, out: Path) -> None:
    """llama.cpp's quantizer (llama_model_quantize, the `llama-quantize` tool's function) from
    the gguf's blocks to Q8_0, on every core, its per-tensor log silenced."""
    import ctypes

    try:
        import llama_cpp
        from llama_cpp import _logger
    except ImportError as exc:  # only the llama.cpp backend asks for this conversion
        raise TextgenError("re-quantizing a gguf needs llama-cpp-python (`make setup` "
                           "builds it)") from exc

    _logger.set_verbose(False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = REQUANTIZE_TO
    params.allow_requantize = True  # the source is already quantized
    params.nthread = 0  # every core
    status = llama_cpp.llama_model_quantize(str(gguf).encode(), str(out).encode(),
                                            ctypes.byref(params))
    if status != 0 or not out.is_file():
        raise TextgenError(f"{gguf}: llama.cpp could not re-quantize it (status {status})")


def _write_gguf_tokenizer(gguf: Path, staging: Path) -> None:
    """The gguf's tokenizer and chat template as transformers files (imports transformers)."""
    from transformers import AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # a malformed gguf raises struct.error, UnicodeDecodeError, ...
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise TextgenError(f"{gguf}: not a valid gguf file ({type(exc).__name__}: "
                           f"{first})") from None
    tokenizer.save_pretrained(staging)
    with contextlib.suppress(OSError, ValueError):  # eos from the tokenizer is enough
        GenerationConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)


def _run_converter(script: Path, folder: Path, out: Path) -> None:
    """llama.cpp's converter in a child process, on a view of the folder whose config carries
    the names the converter reads (transformers 5 saves GPT-2's context as n_positions only)."""
    print(f"textgen: converting {folder.name} for llama.cpp ({CONVERTED_FORMAT}, once)...",
          file=sys.stderr)
    source = out.parent / "source"
    source.mkdir()
    for file in folder.iterdir():
        if file.is_file() and file.name != "config.json":
            (source / file.name).symlink_to(file.resolve())
    config = json.loads((folder / "config.json").read_text("utf-8"))
    if "n_positions" in config:
        config.setdefault("n_ctx", config["n_positions"])
    (source / "config.json").write_text(json.dumps(config), "utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(source), "--outfile", str(out),
         "--outtype", CONVERTED_FORMAT],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    shutil.rmtree(source, ignore_errors=True)
    if result.returncode != 0 or not out.is_file():
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise TextgenError(f"{folder}: llama.cpp's converter failed: "
                           f"{lines[-1] if lines else 'no output'}")


def main(argv: list[str] | None = None) -> int:
    """`python -m repl.engine.convert [SPEC]`: prepare SPEC for llama.cpp now (set-up does this
    for the default model, so the first start does not wait for it)."""
    args = sys.argv[1:] if argv is None else argv
    spec = args[0] if args else "default"
    try:
        model = gguf_model(spec)
    except (NotConvertible, TextgenError) as exc:
        print(f"textgen: {spec} stays on transformers: {exc}", file=sys.stderr)
        return 0 if isinstance(exc, NotConvertible) else 2
    print(f"{spec}: {model.gguf} (tokenizer: {model.tokenizer_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
