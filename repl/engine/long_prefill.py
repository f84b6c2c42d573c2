"""Long prompts prefilled by torch in bf16, their KV cache handed to llama.cpp.

llama.cpp prefills the default model at ~250 tok/s at 2k tokens and ~160 tok/s at 8k on this
project's 2-core Xeon: its CPU matmuls run on AVX-512, and its AMX kernels crash here
(repl/engine/llama_open.py). torch's bf16 matmuls and its flash attention run on AMX through
oneDNN at about 1 TFLOP/s, so an 8k prompt prefills at ~1,050 tok/s in torch. Decoding stays
with llama.cpp, which is several times faster than torch at one token per step.

The hand-off goes through llama.cpp's own sequence-state format (`llama_state_seq_get_data` /
`set_data`, llama-kv-cache.cpp's `state_write`): the cached prefix is read out of llama.cpp,
torch extends it chunk by chunk (progress and cancel between chunks), and the whole sequence
is written back. What torch computes must be what llama.cpp would have: the first time, the
KV of the prompt's first tokens from both runtimes are compared, which also finds how the gguf
converter ordered each attention head's dimensions (it permutes Llama's q/k weights for
llama.cpp's RoPE; GPT-2 and NEOX-RoPE models are left as they are). If neither order matches,
long prompts stay on llama.cpp's own prefill and the notice says so.

Used only on CPUs with native bf16 (AMX or AVX512-BF16; elsewhere torch's bf16 is emulated and
llama.cpp is faster) and for models whose safetensors folder is at hand.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_TOKENS = 1024  # new prompt tokens from which torch's prefill pays for the hand-off
CHUNK = 1024  # tokens per torch forward: ~1 s here, the cancel and progress unit
PROBE = 16  # prompt tokens llama.cpp prefills itself, whose KV checks torch's
# The two runtimes' KV agree below this relative difference (bf16 vs Q8_0 weights: 0.01-0.07
# per layer; a wrong head order: 1.4).
MATCH = 0.25
F16 = 1  # ggml_type of an f16 tensor
ATTENTION = "textgen_prefill"  # the attention function's name in transformers' registry
MAGIC = 0xAF143CD8  # llama-context.cpp's io_magic, the first word of a sequence state


@dataclass
class KVState:
    """One sequence's KV cache as llama.cpp lays it out: per layer, k (tokens, n_embd_k) and
    v (tokens, n_embd_v), each head's dimensions in the gguf's order. Layers are numpy float16
    arrays (read from llama.cpp) or torch tensor views (made by torch, any float dtype) whose
    dimensions after the first flatten, in order, to the width: (tokens, heads, dim) views
    are written out without a copy of their own."""

    k: list[Any]
    v: list[Any]
    v_trans: bool  # how the context stores V (it is written back the same way)

    @property
    def tokens(self) -> int:
        return int(self.k[0].shape[0])

    def head(self, tokens: int) -> KVState:
        """The first `tokens` positions."""
        return KVState([k[:tokens] for k in self.k], [v[:tokens] for v in self.v], self.v_trans)


class StateFormatError(ValueError):
    """The bytes are not a llama.cpp sequence state this module can read."""


def parse_state(blob: Any) -> KVState:
    """A single-stream, f16, sequence-0 state from llama.cpp (bytes or a uint8 array) ->
    KVState of views into it (positions 0..n-1)."""
    blob = np.frombuffer(blob, dtype=np.uint8)
    at = 0

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from(fmt, blob, at)
        at += struct.calcsize(fmt)
        return values

    def rows(count: int, width: int) -> np.ndarray:
        nonlocal at
        array = blob[at:at + count * width * 2].view("<f2").reshape(count, width)
        at += count * width * 2
        return array

    magic, seq_id, n_stream, cells = take("<IiII")
    if magic != MAGIC or seq_id != 0:
        raise StateFormatError("not a llama.cpp sequence-0 state")
    if n_stream != 1 or not cells:
        raise StateFormatError(f"{n_stream} KV streams of {cells} cells")
    meta = blob[at:at + 12 * cells].view("<i4").reshape(cells, 3)  # pos, n_seq_id, seq_id
    at += meta.nbytes
    if not (np.array_equal(meta[:, 0], np.arange(cells)) and (meta[:, 1] == 1).all()
            and (meta[:, 2] == 0).all()):
        raise StateFormatError("cells are not positions 0..n-1 of one sequence")
    v_trans, layers = take("<II")
    ks, vs = [], []
    for _ in range(layers):
        k_type, row = take("<iQ")
        if k_type != F16:
            raise StateFormatError(f"K cache of ggml type {k_type}, not f16")
        ks.append(rows(cells, row // 2))
    for _ in range(layers):
        if v_trans:
            v_type, size, width = take("<iII")
            if v_type != F16 or size != 2:
                raise StateFormatError(f"V cache of ggml type {v_type}, not f16")
            vs.append(rows(width, cells).T)
        else:
            v_type, row = take("<iQ")
            if v_type != F16:
                raise StateFormatError(f"V cache of ggml type {v_type}, not f16")
            vs.append(rows(cells, row // 2))
    if at != len(blob):
        raise StateFormatError(f"{len(blob) - at} bytes left after the KV data")
    return KVState(ks, vs, bool(v_trans))


def state_bytes(state: KVState) -> np.ndarray:
    """KVState -> the bytes `llama_state_seq_set_data` reads (positions 0..n-1 of sequence 0),
    as one uint8 array, each layer copied (and converted to f16) into it once."""
    cells, layers = state.tokens, len(state.k)
    k_widths, v_widths = [_width(k) for k in state.k], [_width(v) for v in state.v]
    # Header, cells (pos, n_seq_id, seq_id), (v_trans, layers), then per layer a 12-byte
    # header and its rows.
    size = 16 + 12 * cells + 8 + sum(12 + 2 * cells * w for w in k_widths + v_widths)
    blob = np.empty(size, dtype=np.uint8)
    at = 0

    def put(fmt: str, *values: Any) -> None:
        nonlocal at
        struct.pack_into(fmt, blob, at, *values)
        at += struct.calcsize(fmt)

    def copy(source: Any, transpose: bool = False) -> None:
        nonlocal at
        if transpose:  # (tokens, ...) -> (..., tokens): llama.cpp's transposed V
            source = source.permute(*range(1, source.ndim), 0) if hasattr(source, "permute") \
                else np.moveaxis(source, 0, -1)
        target = blob[at:at + 2 * int(np.prod(source.shape))].view("<f2")
        _copy_into(target.reshape(source.shape), source)
        at += target.nbytes

    put("<IiII", MAGIC, 0, 1, cells)
    meta = blob[at:at + 12 * cells].view("<i4").reshape(cells, 3)
    meta[:, 0], meta[:, 1], meta[:, 2] = np.arange(cells), 1, 0
    at += meta.nbytes
    put("<II", state.v_trans, layers)
    for k, width in zip(state.k, k_widths, strict=True):
        put("<iQ", F16, 2 * width)
        copy(k)
    for v, width in zip(state.v, v_widths, strict=True):
        if state.v_trans:
            put("<iII", F16, 2, width)
            copy(v, transpose=True)
        else:
            put("<iQ", F16, 2 * width)
            copy(v)
    assert at == size
    return blob


def _llama_cpp() -> Any:
    try:  # an optional runtime: only its backend hands a state over
        import llama_cpp
    except ImportError as exc:
        raise ValueError("llama.cpp is not installed") from exc
    return llama_cpp


def _width(layer: Any) -> int:
    """Values per token of a (tokens, ...) layer."""
    return int(np.prod(layer.shape[1:]))


def _copy_into(target: np.ndarray, source: Any) -> None:
    """target[...] = source, for a numpy or torch source (converted to f16 on the way)."""
    if isinstance(source, np.ndarray):
        np.copyto(target, source)
    else:
        import torch

        torch.from_numpy(target).copy_(source)


def read_state(llm: Any) -> KVState:
    """Sequence 0 of a llama-cpp-python `Llama`'s context."""
    import ctypes

    llama_cpp = _llama_cpp()
    ctx = llm._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    blob = np.empty(size, dtype=np.uint8)
    written = llama_cpp.llama_state_seq_get_data(
        ctx, blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, 0)
    return parse_state(blob[:written])


def write_state(llm: Any, state: KVState) -> None:
    """Replace sequence 0 of the context with `state`; ValueError if llama.cpp refuses it."""
    import ctypes

    llama_cpp = _llama_cpp()
    blob = state_bytes(state)
    pointer = blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, pointer, blob.size, 0) != blob.size:
        raise ValueError("llama.cpp did not take the KV cache")


class TorchPrefill:
    """The model's safetensors in torch bf16, extending a llama.cpp KV cache by many tokens."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.model: Any = None
        self.permuted: bool | None = None  # the gguf's head-dimension order; None: unchecked
        self._lock = threading.Lock()

    @classmethod
    def for_source(cls, source: Path | None) -> TorchPrefill | None:
        """One for `source` where it pays: a safetensors folder on a CPU with native bf16."""
        from repl.engine.cpu_features import native_bf16

        if source is None or not native_bf16():
            return None
        if not ((source / "config.json").is_file() and any(source.glob("*.safetensors"))):
            return None
        return cls(source)

    def load(self) -> None:
        """Load the model (once; ~1 s after torch is imported)."""
        with self._lock:
            if self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # as repl/models.py: no bar under the prompt
            _register_attention()
            model = AutoModelForCausalLM.from_pretrained(
                self.source, dtype=torch.bfloat16, attn_implementation=ATTENTION)
            self.model = model.eval()

    def check(self, ids: list[int], llama: KVState) -> bool:
        """Whether torch's KV for `ids` (the first tokens llama.cpp holds) matches llama.cpp's,
        in the gguf's head order or in torch's own; remembers which."""
        theirs = llama.head(len(ids))
        for permuted in (True, False):
            self.permuted = permuted
            ours = _drain(self.extend(llama.head(0), ids, lambda: False))
            assert ours is not None
            if _close(ours.k, theirs.k) and _close(ours.v, theirs.v):
                return True
        self.permuted = None
        return False

    def extend(self, past: KVState, ids: list[int], cancelled: Callable[[], bool]
               ) -> Generator[int, None, KVState | None]:
        """`past` followed by the KV of `ids`, yielding how many of them are done after each
        chunk; None if `cancelled()` turned true between chunks."""
        import torch
        from transformers import DynamicCache

        config = self.model.config
        past_layers = self._to_torch(past, _kv_heads(config)) if past.tokens else None
        cache = DynamicCache(ddp_cache_data=past_layers, config=config)
        body = self.model.base_model  # no LM head: only the KV is wanted
        cache_kwargs = {_cache_argument(body): cache}
        with torch.inference_mode():
            for start in range(0, len(ids), CHUNK):
                if cancelled():
                    return None
                chunk = torch.tensor([ids[start:start + CHUNK]])  # (1, chunk)
                body(input_ids=chunk, use_cache=True, **cache_kwargs)
                yield min(start + CHUNK, len(ids))
            return self._from_torch(cache, past.v_trans)

    def _to_torch(self, state: KVState, heads: int) -> list[tuple[Any, Any]]:
        """llama.cpp's layers -> per layer torch bf16 (1, heads, tokens, dim), torch's order."""
        import torch

        def layer(x: Any, rope: bool) -> Any:
            t = torch.as_tensor(x).to(torch.bfloat16)
            t = t.view(t.shape[0], heads, -1)  # (tokens, heads, dim)
            if rope and self.permuted:  # gguf (dim/2, 2) pairs -> torch's (2, dim/2) halves
                t = t.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)
            return t.transpose(0, 1).unsqueeze(0).contiguous()

        return [(layer(k, rope=True), layer(v, rope=False))
                for k, v in zip(state.k, state.v, strict=True)]

    def _from_torch(self, cache: Any, v_trans: bool) -> KVState:
        """A DynamicCache -> KVState of views in the gguf's order (copied once, when written)."""

        def layer(x: Any, rope: bool) -> Any:
            t = x[0].transpose(0, 1)  # (1, heads, tokens, dim) -> (tokens, heads, dim)
            if rope and self.permuted:  # torch's (2, dim/2) halves -> gguf (dim/2, 2) pairs
                t = t.unflatten(-1, (2, -1)).transpose(-1, -2)  # (tokens, heads, dim/2, 2)
            return t

        return KVState([layer(x.keys, rope=True) for x in cache.layers],
                       [layer(x.values, rope=False) for x in cache.layers], v_trans)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, chunk_attention)
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)


def chunk_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                    dropout: float = 0.0, scaling: float | None = None, **kwargs: Any
                    ) -> tuple[Any, None]:
    """Causal attention of a chunk of queries that are the last of the keys (batch 1, no
    padding, so no mask is needed): the chunk against the past without a mask, against itself
    with `is_causal`, the two merged by their log-sum-exp. transformers' sdpa path is 30-40%
    slower here: torch turns its boolean mask into a float one in every layer, adds it in every
    block, and grouped-query KV is copied out to every query head first.
    query (1, heads, q, dim); key, value (1, kv_heads, kv, dim)."""
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    _, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    past = key.shape[2] - q
    # The chunk itself: its few keys copied out to every query head, causal.
    own_k = key[:, :, past:].repeat_interleave(heads // kv_heads, 1)  # (1, heads, q, dim)
    own_v = value[:, :, past:].repeat_interleave(heads // kv_heads, 1)
    out, lse = flash(query, own_k, own_v, is_causal=True, scale=scaling)  # lse (1, heads, q)
    if past:
        # The past, unmasked: the query heads that share a kv head stacked along the queries,
        # so the (long) past KV is read where it is, not copied per head.
        grouped = query.reshape(1, kv_heads, heads // kv_heads * q, dim)
        out_past, lse_past = flash(grouped, key[:, :, :past], value[:, :, :past], scale=scaling)
        out_past, lse_past = out_past.reshape(1, heads, q, dim), lse_past.reshape(1, heads, q)
        total = torch.logaddexp(lse, lse_past)
        out = (out.float() * (lse - total).exp().unsqueeze(-1)
               + out_past.float() * (lse_past - total).exp().unsqueeze(-1)).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None  # (1, q, heads, dim)


def _cache_argument(model: Any) -> str:
    """What the model's forward calls its KV cache: `cache` (transformers >= 5.2x), or
    `past_key_values` before it."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"


def _drain(generator: Generator[Any, None, Any]) -> Any:
    """Run a generator to its end; its return value."""
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


def _kv_heads(config: Any) -> int:
    for name in ("num_key_value_heads", "num_attention_heads", "n_head"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError("the model's config names no attention head count")


def _close(ours: list[Any], theirs: list[np.ndarray]) -> bool:
    """Whether torch's layers are llama.cpp's within MATCH (relative, over all layers)."""
    a = np.stack([x.float().reshape(x.shape[0], -1).numpy() for x in ours])
    b = np.stack([x.astype(np.float32) for x in theirs])
    return bool(np.linalg.norm(a - b) <= MATCH * max(float(np.linalg.norm(b)), 1e-6))
