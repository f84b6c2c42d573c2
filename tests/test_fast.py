"""The fast CPU path (repl/fast.py): same greedy text as plain generate(), int8 within its
tolerance, the engine and CLI switches, and the compiled step on the real default model."""

from __future__ import annotations

import pytest
import torch

from repl.engine import GenerationRequest, Generator
from repl.fast import FastDecoder, dequantized, unsupported_reason
from repl.params import preset
from tests.tiny_models import gpt2_tokenizer, random_gpt2

PROMPT = "The history of climate change research began"


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def plain_greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0].tolist()


@pytest.fixture(scope="module")
def prompt_ids() -> torch.Tensor:
    return gpt2_tokenizer()(PROMPT, return_tensors="pt").input_ids


@pytest.mark.parametrize("make", [random_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_fp32_fast_path_gives_plain_greedy_tokens(make, prompt_ids) -> None:
    model = make()
    decoder = FastDecoder(model, "fp32", compile=False)
    expected = plain_greedy(model, prompt_ids, 24)
    assert decoder.generate(prompt_ids, max_new_tokens=24)[0].tolist() == expected
    # The cache is reused: a second, longer request gives the plain tokens again.
    assert decoder.generate(prompt_ids, max_new_tokens=24)[0].tolist() == expected


@pytest.mark.parametrize("make", [random_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_int8_logits_stay_close_to_fp32(make, prompt_ids) -> None:
    model = make()
    with torch.inference_mode():
        reference = model(prompt_ids).logits[0, -1]
    decoder = FastDecoder(model, "int8", compile=False)
    caches = decoder._cache_for(prompt_ids.shape[1])
    with torch.inference_mode():
        logits = decoder._step()(prompt_ids[0], torch.arange(prompt_ids.shape[1]), caches)[0]
    error = (logits - reference).abs().max() / reference.abs().max()
    assert error < 0.02, error
    # Random weights give nearly flat logits, so exact ranks may swap; the winner stays near.
    assert int(reference.argmax()) in logits.topk(5).indices.tolist()


def test_int8_rounding_error_is_half_a_step_per_row() -> None:
    weight = torch.randn(16, 64)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((dequantized(weight, "int8") - weight).abs() <= step / 2 + 1e-7).all()


def test_unsupported_models_say_why() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100,
                                       activation_function="relu"))
    assert "relu" in unsupported_reason(model)
    with pytest.raises(ValueError, match="relu"):
        FastDecoder(model)


def test_engine_takes_fast_path_unless_switched_off(tiny_loaded, monkeypatch) -> None:
    import repl.fast

    monkeypatch.setattr(repl.fast, "MIN_PARAMETERS", 0)
    monkeypatch.setattr(FastDecoder, "start", lambda self: None)  # no compile: eager is enough
    params = preset("greedy").replace(max_new_tokens=12, seed=3)
    request = GenerationRequest(prompt=PROMPT, params=params)
    fast = Generator(tiny_loaded)
    assert fast.fast is not None
    text, stats = fast.generate(request)
    assert stats.engine == "fast-eager" and stats.new_tokens == 12 and stats.ttft_s is not None
    assert fast.generate(request)[0] == text  # reproducible
    plain = Generator(tiny_loaded, fast=False)
    assert plain.fast is None
    assert plain.generate(request)[1].engine == "plain"
    # Sampling goes through transformers' processors with the same seed: same text twice.
    sampled = GenerationRequest(prompt=PROMPT, params=preset("creative").replace(
        max_new_tokens=12, seed=9, stop=("zz",)))
    assert fast.generate(sampled)[0] == fast.generate(sampled)[0]


def test_small_models_and_no_fast_load_stay_plain(tiny_loaded) -> None:
    from dataclasses import replace

    assert Generator(tiny_loaded).fast is None  # 2-layer toy: compiling would not pay
    assert Generator(replace(tiny_loaded, fast=False)).fast is None


def test_no_fast_flag_reaches_load_model() -> None:
    from repl.cli import build_parser
    from repl.options import wants_fast

    parser = build_parser()
    assert parser.parse_args(["generate", "x", "--no-fast"]).fast is False
    assert parser.parse_args(["generate", "x", "--fast"]).fast is True
    # One-shot generation exits before compiling pays: plain unless asked; the TUI: fast.
    assert wants_fast(parser.parse_args(["generate", "x"]), default=False) is False
    assert wants_fast(parser.parse_args([])) is True


@pytest.mark.slow
def test_default_model_compiled_int8_matches_its_eager_step(default_loaded) -> None:
    """The compiled int8 step computes what the eager step computes on the same weights, and
    its greedy text stays close to plain fp32 generate()."""
    tokenizer, model = default_loaded.tokenizer, default_loaded.model
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    decoder = FastDecoder(model, "int8")
    eager = decoder.generate(ids, max_new_tokens=12)[0].tolist()
    assert decoder.wait_compiled(timeout=240), decoder.error
    compiled = decoder.generate(ids, max_new_tokens=12)[0].tolist()
    assert compiled == eager
    text = tokenizer.decode(compiled[ids.shape[1]:])
    assert len(text.split()) >= 6 and text.isascii()


def test_streamer_decodes_incrementally_to_the_same_text() -> None:
    """Chunks join to exactly the full decode, multi-byte characters split across tokens
    included, and the work per token does not grow with the line."""
    import time

    from repl.streaming import CountingStreamer

    tokenizer = gpt2_tokenizer()
    text = ("naïve café, 日本語 and 😀 emoji; " * 40).strip() + "\n\nend"
    ids = tokenizer(text).input_ids
    streamer = CountingStreamer(tokenizer)
    streamer.put(torch.tensor([[ids[0]]]))  # the prompt
    started = time.perf_counter()
    for token in ids[1:]:
        streamer.put(torch.tensor([token]))
    per_token = (time.perf_counter() - started) / (len(ids) - 1)
    streamer.end()
    chunks = []
    while (chunk := streamer.text_queue.get()) is not streamer.stop_signal:
        chunks.append(chunk)
    assert "".join(chunks) == tokenizer.decode(ids[1:])
    assert "\ufffd" not in "".join(chunks)
    assert len(chunks) > len(ids) / 3  # text arrives token by token, not per word or line
    assert per_token < 0.005
