"""Long prompts prefilled by torch and handed to llama.cpp (repl/engine/long_prefill.py): the
hand-off gives the logits llama.cpp's own prefill gives, on GPT-2 (no RoPE) and on a Llama
(RoPE, whose head dimensions the gguf converter reorders; grouped-query attention); progress,
cancel, and the fall-back when the two runtimes disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from repl.engine import GenerationRequest, Notice, Progress
from repl.params import SamplingParams
from tests.test_llama_backend import run

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup)")

from repl.engine import long_prefill
from repl.engine.long_prefill import TorchPrefill

GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)
PROMPT = "The lighthouse stood on the cliff above the harbour, and every night " * 12


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny models, short prompts: the hand-off from 64 new tokens, in 32-token chunks."""
    monkeypatch.setattr(long_prefill, "MIN_TOKENS", 64)
    monkeypatch.setattr(long_prefill, "CHUNK", 32)
    monkeypatch.setattr(long_prefill, "PROBE", 8)


@pytest.fixture(scope="module")
def tiny_rope_llama(tmp_path_factory: pytest.TempPathFactory):
    from repl.engine.llama import LlamaCppBackend
    from tests.tiny_models import save_random_llama

    folder = save_random_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    backend = LlamaCppBackend.open(str(folder), threads=2)
    backend.source = folder
    return backend


def prompt_logits(backend, prefill: TorchPrefill | None, prompt: str = PROMPT):
    """(logits after the prompt, stats, other items) with `prefill` (None: llama.cpp alone)."""
    backend.long_prefill = prefill
    backend.clear_cache()
    text, stats, others = run(backend, GenerationRequest(prompt, GREEDY))
    return backend._prompt_logits[1].copy(), text, stats, others


def assert_same_logits(ours: np.ndarray, theirs: np.ndarray) -> None:
    """torch bf16 vs llama.cpp Q8_0: the same distribution, within rounding."""
    assert ours.argmax() == theirs.argmax()
    assert np.linalg.norm(ours - theirs) < 0.05 * np.linalg.norm(theirs)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_handing_off_gives_llama_cpps_own_logits(which, tiny_llama, tiny_model_dir,
                                                 tiny_rope_llama, small_chunks):
    backend, folder = ((tiny_llama, tiny_model_dir) if which == "gpt2" else
                       (tiny_rope_llama, tiny_rope_llama.source))
    try:
        own, own_text, own_stats, _ = prompt_logits(backend, None)
        prefill = TorchPrefill(folder)
        ours, text, stats, others = prompt_logits(backend, prefill)
    finally:
        backend.long_prefill = None
    assert own_stats.prefill == "" and stats.prefill == "torch bf16"
    assert prefill.permuted is (which == "llama")  # the converter reorders RoPE heads only
    assert_same_logits(ours, own)
    assert text == own_text
    progress = [item for item in others if isinstance(item, Progress)]
    assert progress[0].done == 0 and progress[-1].done == progress[-1].total
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].total == stats.prompt_tokens  # nothing was cached before


def test_after_the_hand_off_the_cache_serves_regenerate_and_continue(tiny_rope_llama,
                                                                     small_chunks):
    backend = tiny_rope_llama
    try:
        _, text, first, _ = prompt_logits(backend, TorchPrefill(backend.source))
        again, second, _ = run(backend, GenerationRequest(PROMPT, GREEDY))
        _, third, _ = run(backend, GenerationRequest(PROMPT + "Then the ships came home.",
                                                     GREEDY))
    finally:
        backend.long_prefill = None
    assert again == text and second.cached_tokens == second.prompt_tokens
    # The next turn prefills only its new tokens (the prompt's last token may merge with them).
    assert third.prompt_tokens > first.prompt_tokens
    assert third.cached_tokens >= first.prompt_tokens - 1
    assert third.prefill == ""  # a short extension stays on llama.cpp


def test_a_prefix_cached_by_llama_cpp_is_extended_by_torch(tiny_rope_llama, small_chunks):
    backend = tiny_rope_llama
    head = "A short question about the harbour. "
    try:
        own, own_text, _, _ = prompt_logits(backend, None, head + PROMPT)
        backend.long_prefill = TorchPrefill(backend.source)
        backend.clear_cache()
        run(backend, GenerationRequest(head, GREEDY))  # llama.cpp prefills the head itself
        text, stats, _ = run(backend, GenerationRequest(head + PROMPT, GREEDY))
        ours = backend._prompt_logits[1].copy()
    finally:
        backend.long_prefill = None
    assert stats.prefill == "torch bf16" and stats.cached_tokens > 0
    assert_same_logits(ours, own)
    assert text == own_text


def test_cancelling_a_torch_prefill_keeps_the_backend_usable(tiny_rope_llama, small_chunks):
    backend = tiny_rope_llama
    try:
        backend.long_prefill = TorchPrefill(backend.source)
        backend.clear_cache()
        stats = None
        for item in backend.stream(GenerationRequest(PROMPT, GREEDY)):
            if isinstance(item, Progress) and item.done > 0:
                backend.cancel()
            if not isinstance(item, (str, Progress, Notice)):
                stats = item
        assert stats is not None and stats.finish_reason == "cancelled"
        assert stats.new_tokens == 0
        own, own_text, _, _ = prompt_logits(backend, None)
        ours, text, after, _ = prompt_logits(backend, TorchPrefill(backend.source))
    finally:
        backend.long_prefill = None
    assert after.finish_reason == "length" and text == own_text
    assert_same_logits(ours, own)


def test_when_the_runtimes_disagree_llama_cpp_prefills_and_says_so(tiny_rope_llama,
                                                                   small_chunks, monkeypatch):
    backend = tiny_rope_llama
    monkeypatch.setattr(long_prefill, "MATCH", -1.0)  # no KV ever agrees
    try:
        own, own_text, _, _ = prompt_logits(backend, None)
        ours, text, stats, others = prompt_logits(backend, TorchPrefill(backend.source))
        off = backend.long_prefill
    finally:
        backend.long_prefill = None
    notices = [item.message for item in others if isinstance(item, Notice)]
    assert len(notices) == 1 and "llama.cpp prefills them" in notices[0]
    assert off is None and stats.prefill == ""
    assert text == own_text and np.array_equal(ours, own)


def test_the_state_round_trips_byte_for_byte(tiny_rope_llama):
    backend = tiny_rope_llama
    backend.clear_cache()
    run(backend, GenerationRequest("Round trip", GREEDY))
    state = long_prefill.read_state(backend.llm)
    assert state.tokens == len(backend.cached)
    import ctypes

    import llama_cpp

    ctx = backend.llm._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    raw = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, raw, size, 0)
    assert long_prefill.state_bytes(state).tobytes() == bytes(raw)[:written]
    with pytest.raises(long_prefill.StateFormatError):
        long_prefill.parse_state(b"\0" * 64)


def test_chunk_attention_is_causal_attention_over_the_whole_sequence():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    past, chunk, heads, kv_heads, dim = 40, 24, 6, 2, 16
    query = torch.randn(1, heads, chunk, dim)
    key, value = torch.randn(1, kv_heads, past + chunk, dim), torch.randn(1, kv_heads,
                                                                           past + chunk, dim)
    out, _ = long_prefill.chunk_attention(None, query, key, value, None, scaling=0.3)
    keep = torch.arange(past + chunk)[None, :] <= past + torch.arange(chunk)[:, None]
    expected = F.scaled_dot_product_attention(
        query, key.repeat_interleave(3, 1), value.repeat_interleave(3, 1), attn_mask=keep,
        scale=0.3)  # (1, heads, chunk, dim)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-4)
    first, _ = long_prefill.chunk_attention(None, query, key[:, :, :chunk], value[:, :, :chunk],
                                            None)  # no past: the chunk alone, causal
    torch.testing.assert_close(first, F.scaled_dot_product_attention(
        query, key[:, :, :chunk].repeat_interleave(3, 1),
        value[:, :, :chunk].repeat_interleave(3, 1), is_causal=True).transpose(1, 2),
        atol=1e-5, rtol=1e-4)


def test_it_is_used_only_with_native_bf16_and_a_safetensors_folder(tmp_path, monkeypatch,
                                                                   tiny_model_dir):
    from repl.engine import cpu_features

    monkeypatch.setattr(cpu_features, "native_bf16", lambda: True)
    assert TorchPrefill.for_source(tiny_model_dir) is not None
    assert TorchPrefill.for_source(None) is None  # a bare gguf
    assert TorchPrefill.for_source(tmp_path) is None  # no weights
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: False)
    assert TorchPrefill.for_source(tiny_model_dir) is None


def test_a_long_prompt_on_the_default_model_prefills_on_torch(default_llama):
    """The real model, a 1,100-token prompt: the same greedy text as llama.cpp's own prefill."""
    from repl.engine.cpu_features import native_bf16
    from repl.models import default_model_dir

    if not native_bf16():
        pytest.skip("this CPU has no native bf16: long prompts stay on llama.cpp")
    text = Path(__file__).with_name("test_llama_backend.py").read_text()
    ids = default_llama.tokenizer.encode(text)[:1100]
    prompt = default_llama.tokenizer.decode(ids)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    try:
        default_llama.long_prefill = None
        default_llama.clear_cache()
        own, own_stats, _ = run(default_llama, GenerationRequest(prompt, params))
        default_llama.long_prefill = TorchPrefill(default_model_dir())
        default_llama.clear_cache()
        ours, stats, _ = run(default_llama, GenerationRequest(prompt, params))
    finally:
        default_llama.long_prefill = TorchPrefill.for_source(default_model_dir())
    assert stats.prefill == "torch bf16" and own_stats.prefill == ""
    assert ours == own


def test_the_prefill_leaves_torchs_thread_count_as_it_was(tiny_rope_llama, small_chunks):
    import torch

    backend = tiny_rope_llama
    before = torch.get_num_threads()
    # A caller's count (a transformers model in Compare): neither the prefill's 2 nor the
    # sampler's 1, so whichever forgot to restore it shows.
    torch.set_num_threads(3)
    try:
        _, _, stats, _ = prompt_logits(backend, TorchPrefill(backend.source))
        after = torch.get_num_threads()
    finally:
        backend.long_prefill = None
        torch.set_num_threads(before)
    assert stats.prefill == "torch bf16" and backend.threads == 2
    assert after == 3
