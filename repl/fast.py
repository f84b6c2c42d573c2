"""The fast CPU decoding path: compressed weights, a static KV cache and a compiled step.

Batch-1 decoding reads every weight once per token, and plain `generate()` adds hundreds of small
eager ops per token on top. `FastDecoder` repacks a supported model (Llama family, GPT-2) into a
few stacked tensors (int8 weight-only with one fp32 scale per output row by default), keeps a
preallocated KV cache, and decodes each token with one `torch.compile`d layer function called
per layer. The prompt takes one pass through the model itself (fp32), whose keys and values are
copied into that cache. The matrix-vector products are written as a multiply-and-sum, so
inductor fuses the int8 -> fp32 conversion into the reduction and streams one byte per weight;
this CPU's oneDNN bf16/int8 kernels are slower than fp32 MKL at batch 1 (see benchmarks/NOTES.md).

`generate(**kwargs)` takes the keyword arguments the engine gives `model.generate` (greedy or
sampling through transformers' own logits processors, a streamer, stopping criteria) and returns
the sequences, so the engine swaps one callable for the other. Compilation takes tens of seconds
the first time (inductor caches it on disk for later starts), so it runs in a background thread;
until it is done the same step runs eagerly (`compiled` says which).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

WeightFormat = Literal["int8", "bf16", "fp32"]
# One thread per compiled kernel: on this shared 2-core machine a 2-thread kernel waits at its
# barrier whenever another process holds a core (decode step 381 ms with 2 threads vs 54 ms
# with 1 under load; benchmarks/NOTES.md).
# TEXTGEN_FAST_THREADS=2 suits a machine with cores to spare (then restart: it is compiled in).
KERNEL_THREADS = int(os.environ.get("TEXTGEN_FAST_THREADS", "1"))
CACHE_BUCKET = 256  # KV-cache capacity grows in these steps: attention cost follows capacity
_COMPILED: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {}
_COMPILE_LOCK = threading.Lock()


def unsupported_reason(model: Any) -> str | None:
    """Why `model` cannot take the fast path, or None when it can."""
    config = model.config
    if model.device.type != "cpu":
        return "the fast path is CPU-only"
    if config.model_type == "llama":
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            return f"rope type {rope.get('rope_type')!r} is not supported"
        if config.hidden_act != "silu" or getattr(config, "attention_bias", False) \
                or getattr(config, "mlp_bias", False):
            return "only bias-free SiLU Llama models are supported"
        return None
    if config.model_type == "gpt2":
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            return f"activation {config.activation_function!r} is not supported"
        if config.scale_attn_by_inverse_layer_idx or not config.scale_attn_weights:
            return "this GPT-2 attention scaling is not supported"
        return None
    return f"model type {config.model_type!r} has no fast path"


def _quantize(weight: torch.Tensor, weight_format: WeightFormat
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A [out, in] weight as (stored weight, per-row scale or None)."""
    weight = weight.detach().float()
    if weight_format == "fp32":
        return weight.contiguous(), None
    if weight_format == "bf16":
        return weight.to(torch.bfloat16).contiguous(), None
    scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    stored = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return stored.contiguous(), scale.contiguous()


def dequantized(weight: torch.Tensor, weight_format: WeightFormat) -> torch.Tensor:
    """`weight` as the fast path multiplies by it (compressed, back in fp32): for quality checks."""
    return _restore(*_quantize(weight, weight_format))


def _linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None,
            b: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] @ w[out, in].T (* s) (+ b). Compressed weights as a multiply-and-sum, which
    inductor compiles into one reduction that converts each weight as it streams it; the
    [out, T] order makes each weight row serve all T tokens of a prefill while it is in cache."""
    if w.dtype == x.dtype:
        y = F.linear(x, w)
    elif not torch.compiler.is_compiling():  # eager (a long prompt): convert, then one matmul
        y = F.linear(x, _restore(w, s))
        s = None
    else:
        y_t = (w[:, None, :].to(x.dtype) * x[None]).sum(-1)
        y = (y_t * s[:, None] if s is not None else y_t).t()
        s = None
    if s is not None:
        y = y * s
    return y if b is None else y + b


def _attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """q [T, H, d]; caches [KV, cap, d]; mask [T, cap] (True = visible) -> [T, H*d].

    Written as multiply-and-sum rather than bmm: inductor fuses it into its own kernels, so no
    tiny library call (and its thread barrier) is paid per layer."""
    t, heads, dim = q.shape
    kv = k_cache.shape[0]
    group = heads // kv
    q = q.permute(1, 0, 2).reshape(kv, group * t, 1, dim)
    scores = (q * k_cache[:, None]).sum(-1) * (1.0 / math.sqrt(dim))  # [kv, group*t, cap]
    scores = scores.view(kv, group, t, -1).masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(kv, group * t, -1, 1)
    out = (probs * v_cache[:, None]).sum(-2).view(heads, t, dim)
    return out.permute(1, 0, 2).reshape(t, heads * dim)


def _llama_layer(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                 pos: torch.Tensor, w: dict[str, torch.Tensor | None], k_cache: torch.Tensor,
                 v_cache: torch.Tensor, heads: int, kv_heads: int, eps: float) -> torch.Tensor:
    """One Llama decoder layer over the new tokens' hidden states h [T, width]; writes their
    keys and values into the layer's caches at `pos`."""
    t, dim = h.shape[0], k_cache.shape[-1]
    q_size, kv_size = heads * dim, kv_heads * dim
    x = F.rms_norm(h, (h.shape[-1],), w["ln1"], eps)
    qkv = _linear(x, w["qkv"], w["qkv_s"])
    q = qkv[:, :q_size].view(t, heads, dim)
    k = qkv[:, q_size:q_size + kv_size].view(t, kv_heads, dim)
    v = qkv[:, q_size + kv_size:].view(t, kv_heads, dim)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k_cache.index_copy_(1, pos, k.transpose(0, 1))
    v_cache.index_copy_(1, pos, v.transpose(0, 1))
    h = h + _linear(_attend(q, k_cache, v_cache, mask), w["o"], w["o_s"])
    x = F.rms_norm(h, (h.shape[-1],), w["ln2"], eps)
    gate_up = _linear(x, w["gate_up"], w["gate_up_s"])
    inner = gate_up.shape[-1] // 2
    return h + _linear(F.silu(gate_up[:, :inner]) * gate_up[:, inner:], w["down"], w["down_s"])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _gpt2_layer(h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                pos: torch.Tensor, w: dict[str, torch.Tensor | None], k_cache: torch.Tensor,
                v_cache: torch.Tensor, heads: int, kv_heads: int, eps: float) -> torch.Tensor:
    """One GPT-2 block; same contract as `_llama_layer` (cos and sin are unused)."""
    t, dim = h.shape[0], k_cache.shape[-1]
    width = heads * dim
    x = F.layer_norm(h, (width,), w["ln1"], w["ln1_b"], eps)
    qkv = _linear(x, w["qkv"], w["qkv_s"], w["qkv_b"])
    q = qkv[:, :width].view(t, heads, dim)
    k = qkv[:, width:2 * width].view(t, heads, dim)
    v = qkv[:, 2 * width:].view(t, heads, dim)
    k_cache.index_copy_(1, pos, k.transpose(0, 1))
    v_cache.index_copy_(1, pos, v.transpose(0, 1))
    h = h + _linear(_attend(q, k_cache, v_cache, mask), w["o"], w["o_s"], w["o_b"])
    x = F.layer_norm(h, (width,), w["ln2"], w["ln2_b"], eps)
    up = F.gelu(_linear(x, w["up"], w["up_s"], w["up_b"]), approximate="tanh")
    return h + _linear(up, w["down"], w["down_s"], w["down_b"])


def _head(h: torch.Tensor, w: dict[str, torch.Tensor | None], eps: float) -> torch.Tensor:
    """The last position's logits [1, vocab] from the final norm and the output matrix."""
    last = h[-1:]
    if w["norm_b"] is None:
        last = F.rms_norm(last, (last.shape[-1],), w["norm"], eps)
    else:
        last = F.layer_norm(last, (last.shape[-1],), w["norm"], w["norm_b"], eps)
    return _linear(last, w["head"], w["head_s"])


_LAYERS = {"llama": _llama_layer, "gpt2": _gpt2_layer}


Weights = dict[str, torch.Tensor | None]


def _matrix(w: Weights, name: str, matrix: torch.Tensor, weight_format: WeightFormat) -> None:
    """Store an [out, in] matrix as w[name] and its per-row scale (or None) as w[name_s]."""
    w[name], w[f"{name}_s"] = _quantize(matrix, weight_format)


def _vector(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().float().contiguous()


def _pack_top(embed: torch.Tensor, head: torch.Tensor, norm: torch.Tensor,
              norm_b: torch.Tensor | None, weight_format: WeightFormat) -> Weights:
    """Embedding, final norm and output matrix; a tied embedding is read from the same
    compressed matrix as the output."""
    top: Weights = {"norm": _vector(norm), "norm_b": _vector(norm_b)}
    _matrix(top, "head", head, weight_format)
    if head is embed:
        top["embed"], top["embed_s"] = top["head"], top["head_s"]
    else:
        top["embed"], top["embed_s"] = embed.detach().float(), None
    return top


def _pack_llama(model: Any, weight_format: WeightFormat) -> tuple[list[Weights], Weights]:
    layers: list[Weights] = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        w: Weights = {"ln1": _vector(layer.input_layernorm.weight),
                      "ln2": _vector(layer.post_attention_layernorm.weight)}
        _matrix(w, "qkv", torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                     attn.v_proj.weight]), weight_format)
        _matrix(w, "o", attn.o_proj.weight, weight_format)
        _matrix(w, "gate_up", torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                weight_format)
        _matrix(w, "down", mlp.down_proj.weight, weight_format)
        layers.append(w)
    top = _pack_top(model.model.embed_tokens.weight, model.lm_head.weight,
                    model.model.norm.weight, None, weight_format)
    top["inv_freq"] = _vector(model.model.rotary_emb.inv_freq)
    return layers, top


def _pack_gpt2(model: Any, weight_format: WeightFormat) -> tuple[list[Weights], Weights]:
    layers: list[Weights] = []
    for block in model.transformer.h:
        w: Weights = {}
        # GPT-2's Conv1D stores weights as [in, out]: transpose to [out, in].
        for name, conv in (("qkv", block.attn.c_attn), ("o", block.attn.c_proj),
                           ("up", block.mlp.c_fc), ("down", block.mlp.c_proj)):
            _matrix(w, name, conv.weight.t(), weight_format)
            w[f"{name}_b"] = _vector(conv.bias)
        for name, norm in (("ln1", block.ln_1), ("ln2", block.ln_2)):
            w[name], w[f"{name}_b"] = _vector(norm.weight), _vector(norm.bias)
        layers.append(w)
    top = _pack_top(model.transformer.wte.weight, model.lm_head.weight,
                    model.transformer.ln_f.weight, model.transformer.ln_f.bias, weight_format)
    top["wpe"] = _vector(model.transformer.wpe.weight)
    return layers, top


class FastDecoder:
    """A model repacked for fast batch-1 decoding on CPU; `generate(**kwargs)` mirrors the
    subset of `model.generate` that the engine uses.

    Its weights are the compressed ones from the first token on: until the compiled step is
    ready, the same step runs eagerly on the compressed weights converted back to fp32 (about
    as fast as plain `generate()`), so switching to the compiled step changes speed, not text
    (only fp32 summation order differs)."""

    def __init__(self, model: Any, weight_format: WeightFormat = "int8",
                 compile: bool = True) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(reason)
        config = model.config
        self.model = model
        self.arch: str = config.model_type
        self.weight_format = weight_format
        if self.arch == "llama":
            self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
            self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
            self.eps = config.rms_norm_eps
            self.context = config.max_position_embeddings
        else:
            self.heads = self.kv_heads = config.n_head
            self.head_dim = config.n_embd // config.n_head
            self.eps = config.layer_norm_epsilon
            self.context = config.n_positions
        self.compile = compile and weight_format != "fp32"
        self.compile_s: float | None = None
        self.error: BaseException | None = None
        self._packed: tuple[list[Weights], Weights] | None = None
        self._eager: tuple[list[Weights], Weights] | None = None
        self._compiled = threading.Event()
        self._pack_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one generation at a time: they share the cache
        self._caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._started = False

    @property
    def compiled(self) -> bool:
        """True once generation runs the compiled step (until then: eager, same weights)."""
        return self._compiled.is_set() and self.error is None

    def start(self) -> None:
        """Pack and compile in a low-priority background thread (once)."""
        if self._started:
            return
        self._started = True
        threading.Thread(target=self._prepare, name="textgen-fast", daemon=True).start()

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for the background compilation; True when the compiled step is in use."""
        self.start()
        self._compiled.wait(timeout)
        return self.compiled

    def _prepare(self) -> None:
        _lower_priority()
        self._pack()
        if self.compile:
            self.warm_up()
        else:
            self._compiled.set()

    def _pack(self) -> tuple[list[Weights], Weights]:
        with self._pack_lock:
            if self._packed is None:
                pack = _pack_llama if self.arch == "llama" else _pack_gpt2
                with torch.no_grad():
                    self._packed = pack(self.model, self.weight_format)
                    self._eager = _as_fp32(*self._packed)
            return self._packed

    def warm_up(self) -> None:
        """Compile the decode step (layer and head) by running it twice (tens of seconds cold,
        a few seconds from inductor's disk cache). A compiler error is kept in `self.error`
        and generation stays eager."""
        started = time.perf_counter()
        try:
            layers, top = self._pack()
            layer, head = _compiled(self.arch)
            with torch.inference_mode():
                caches = self._new_caches(CACHE_BUCKET)
                for position in range(2):
                    pos = torch.tensor([position])
                    self._forward(pos + 1, pos, caches, layers, top, layer, head)
        except Exception as exc:  # any compiler failure means: stay on the eager step
            self.error = exc
        finally:
            self.compile_s = time.perf_counter() - started
            self._compiled.set()
            if self.error is None:
                self._eager = None  # the fp32 copies are no longer needed

    def _new_caches(self, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (self.kv_heads, capacity, self.head_dim)
        caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(self._n_layer())]
        for pair in caches:  # one compiled graph for every capacity
            for cache in pair:
                torch._dynamo.mark_dynamic(cache, 1)
        return caches

    def _n_layer(self) -> int:
        return self.model.config.num_hidden_layers

    def _cache_for(self, needed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) caches [kv_heads, capacity, head_dim] holding at least
        `needed` positions; capacity grows in CACHE_BUCKET steps and is reused while it fits."""
        capacity = min(self.context, -(-needed // CACHE_BUCKET) * CACHE_BUCKET)
        current = self._caches[0][0].shape[1] if self._caches else 0
        if not capacity <= current <= 2 * capacity:
            self._caches = self._new_caches(capacity)
        return self._caches

    def _step(self) -> Callable[..., torch.Tensor]:
        """The decode step to run now: the compiled one once ready, else the eager layers on
        fp32 copies of the compressed weights (the same numbers, so compiling changes speed,
        not text)."""
        layers, top = self._pack()
        eager = self._eager
        if self.compiled or eager is None:
            layer, head = _compiled(self.arch) if self.compile else (_LAYERS[self.arch], _head)
            return lambda ids, pos, caches: self._forward(ids, pos, caches, layers, top, layer,
                                                          head)
        eager_layers, eager_top = eager
        return lambda ids, pos, caches: self._forward(ids, pos, caches, eager_layers, eager_top,
                                                      _LAYERS[self.arch], _head)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor,
                 caches: list[tuple[torch.Tensor, torch.Tensor]], layers: list[Weights],
                 top: Weights, layer: Callable[..., torch.Tensor],
                 head: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Feed tokens `ids` at positions `pos`; the last one's logits [1, vocab]."""
        embed, embed_s = top["embed"], top["embed_s"]
        assert embed is not None
        h = embed[ids].float()
        if embed_s is not None:
            h = h * embed_s[ids][:, None]
        if top.get("wpe") is not None:
            h = h + top["wpe"][pos]  # type: ignore[index]
            cos = sin = h
        else:
            freqs = pos[:, None].float() * top["inv_freq"][None]  # type: ignore[index]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
        mask = torch.arange(caches[0][0].shape[1])[None, :] <= pos[:, None]
        torch._dynamo.mark_dynamic(mask, 1)  # the cache's capacity
        for w, (k, v) in zip(layers, caches, strict=True):
            h = layer(h, cos, sin, mask, pos, w, k, v, self.heads, self.kv_heads, self.eps)
        return head(h, top, self.eps)

    def _prefill(self, prompt: torch.Tensor,
                 caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The prompt in one pass through the model itself (its own fp32 weights and kernels);
        its keys and values are copied into the static caches and decoding goes on with the
        compressed weights. One fp32 pass costs about what plain `generate()` spends before
        its first token, while feeding the prompt through the one-token compiled step cost
        one decode step per prompt token (3.5x the plain time to first token)."""
        out = self.model(input_ids=prompt[None], use_cache=True)
        for layer, (k_cache, v_cache) in zip(out.past_key_values.layers, caches, strict=True):
            k_cache[:, :prompt.shape[0]] = layer.keys[0]
            v_cache[:, :prompt.shape[0]] = layer.values[0]
        return out.logits[:, -1].float()

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, streamer: Any = None,
                 stopping_criteria: Any = None, do_sample: bool = False,
                 temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None,
                 repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                 **_ignored: Any) -> torch.Tensor:
        """Generate like `model.generate` for one sequence; returns [1, prompt + new] ids."""
        with self._run_lock:
            return self._generate(input_ids, max_new_tokens, streamer, stopping_criteria,
                                  do_sample, temperature, top_k, top_p, min_p,
                                  repetition_penalty, no_repeat_ngram_size)

    def _generate(self, input_ids: torch.Tensor, max_new_tokens: int, streamer: Any,
                  stopping_criteria: Any, do_sample: bool, temperature: float | None,
                  top_k: int | None, top_p: float | None, min_p: float | None,
                  repetition_penalty: float, no_repeat_ngram_size: int) -> torch.Tensor:
        config = self.model.generation_config
        eos = config.eos_token_id
        eos_ids = {e for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        prompt = input_ids[0].to("cpu")
        n_prompt = prompt.shape[0]
        limit = min(max_new_tokens, self.context - n_prompt)
        sequence = torch.empty(n_prompt + max(limit, 0), dtype=torch.long)
        sequence[:n_prompt] = prompt
        processors = _processors(n_prompt, config, eos_ids, do_sample, temperature, top_k,
                                 top_p, min_p, repetition_penalty, no_repeat_ngram_size)
        if streamer is not None:
            streamer.put(prompt[None])
        caches = self._cache_for(n_prompt + limit)
        step = self._step()
        length = n_prompt
        with torch.inference_mode():
            logits = self._prefill(prompt, caches)
            while length < n_prompt + limit:
                so_far = sequence[None, :length]
                scores = processors(so_far, logits.float()) if processors else logits
                if do_sample:
                    probs = torch.softmax(scores, dim=-1)
                    token = int(torch.multinomial(probs, num_samples=1)[0, 0])
                else:
                    token = int(scores[0].argmax())
                sequence[length] = token
                length += 1
                if streamer is not None:
                    streamer.put(torch.tensor([token]))
                if token in eos_ids:
                    break
                if stopping_criteria is not None and \
                        bool(stopping_criteria(sequence[None, :length], scores).any()):
                    break
                if length >= n_prompt + limit:
                    break
                logits = step(torch.tensor([token]), torch.tensor([length - 1]), caches)
        if streamer is not None:
            streamer.end()
        return sequence[None, :length]


def _processors(n_prompt: int, config: Any, eos_ids: set[int], do_sample: bool,
                temperature: float | None, top_k: int | None, top_p: float | None,
                min_p: float | None, repetition_penalty: float, no_repeat_ngram_size: int
                ) -> Any:
    """transformers' own logits processors, in `generate()`'s order, for what was asked."""
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    from repl.params import sampling_warpers

    processors = LogitsProcessorList()
    if repetition_penalty and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    min_new = getattr(config, "min_new_tokens", None)
    if min_new and eos_ids:
        processors.append(MinNewTokensLengthLogitsProcessor(n_prompt, min_new, list(eos_ids)))
    if do_sample:
        processors.extend(sampling_warpers(temperature, top_k, top_p, min_p))
    return processors


def _as_fp32(layers: list[Weights], top: Weights) -> tuple[list[Weights], Weights]:
    """The packed weights with every compressed matrix converted back to fp32 (scales applied),
    for the eager step: the same numbers the compiled step multiplies by."""

    def convert(w: Weights) -> Weights:
        out = dict(w)
        for name, value in w.items():
            scale = w.get(f"{name}_s")
            if value is not None and value.dtype != torch.float32 and not name.endswith("_s"):
                out[name] = _restore(value, scale)
                out[f"{name}_s"] = None
        return out

    return [convert(w) for w in layers], convert(top)


def _restore(stored: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return stored.float() if scale is None else stored.float() * scale[:, None]


def _lower_priority() -> None:
    """Run this thread (and the compiler processes it starts) at the lowest CPU priority, so
    compiling in the background does not slow the generation the user is waiting for."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _compiled(arch: str) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """The compiled layer and head functions of an architecture, shared by every decoder in
    the process. A layer is compiled once and called per layer with that layer's weights, so
    compiling costs one layer, not the whole model; weights are inputs, not constants, so
    models of the same shape share the code (and inductor's disk cache)."""
    with _COMPILE_LOCK:
        if arch not in _COMPILED:
            options = {"cpp.threads": KERNEL_THREADS}
            _COMPILED[arch] = (
                torch.compile(_LAYERS[arch], dynamic=False, fullgraph=True, options=options),
                torch.compile(_head, dynamic=False, fullgraph=True, options=options),
            )
        return _COMPILED[arch]


MIN_PARAMETERS = 50_000_000  # below this, compiling costs more than it saves
_DECODERS: weakref.WeakKeyDictionary[Any, FastDecoder] = weakref.WeakKeyDictionary()


def decoder_for(model: Any) -> FastDecoder | None:
    """The shared fast decoder of `model`, already preparing in the background, or None when
    the model cannot take the fast path or is too small for it to pay."""
    if unsupported_reason(model) is not None:
        return None
    if sum(p.numel() for p in model.parameters()) < MIN_PARAMETERS:
        return None
    with _COMPILE_LOCK:
        decoder = _DECODERS.get(model)
        if decoder is None:
            decoder = _DECODERS[model] = FastDecoder(model)
    decoder.start()
    return decoder
