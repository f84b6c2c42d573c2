"""The llama.cpp backend: same semantics as transformers, the prefix cache, chunked prefill,
conversion once, and the backend choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from repl.engine import GenerationRequest, GenerationStats, Notice, Progress, open_backend
from repl.params import SamplingParams

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup)")

SAMPLED = dict(temperature=0.9, top_k=40, top_p=0.95, min_p=0.01, repetition_penalty=1.1)


def run(backend, request: GenerationRequest) -> tuple[str, GenerationStats, list]:
    text, stats, others = [], None, []
    for item in backend.stream(request):
        if isinstance(item, str):
            text.append(item)
        elif isinstance(item, GenerationStats):
            stats = item
        else:
            others.append(item)
    assert stats is not None
    return "".join(text), stats, others


def test_same_seed_same_text_every_run(tiny_llama):
    params = SamplingParams(seed=42, max_new_tokens=24, **SAMPLED)
    first = run(tiny_llama, GenerationRequest("Once upon a time", params))
    tiny_llama.clear_cache()
    second = run(tiny_llama, GenerationRequest("Once upon a time", params))
    third = run(tiny_llama, GenerationRequest("Once upon a time", params.replace(seed=43)))
    assert first[0] == second[0] and first[1].new_tokens == 24
    assert third[0] != first[0]  # the seed matters: 24 sampled tokens from 50k do not repeat


def test_stats_say_which_backend_and_weights_ran(tiny_llama):
    _, stats, _ = run(tiny_llama, GenerationRequest("Hi", SamplingParams(max_new_tokens=3)))
    assert (stats.engine, stats.weights) == ("llama.cpp", "Q8_0")
    assert tiny_llama.info.backend == "llama.cpp" and tiny_llama.info.dtype == "Q8_0"
    assert tiny_llama.info.runs_on == "llama.cpp Q8_0"


def test_regenerate_reuses_the_prompts_kv_cache(tiny_llama):
    params = SamplingParams(seed=1, max_new_tokens=8, **SAMPLED)
    request = GenerationRequest("The history of the lighthouse " * 8, params)
    tiny_llama.clear_cache()
    text, cold, _ = run(tiny_llama, request)
    again, warm, _ = run(tiny_llama, request)
    assert cold.cached_tokens == 0
    assert warm.cached_tokens == warm.prompt_tokens  # nothing is evaluated again
    assert again == text  # the cache changes no logits


def test_continuing_prefills_only_the_new_tokens(tiny_llama):
    from repl.token_probs import TokenTrace

    params = SamplingParams(seed=3, max_new_tokens=10, **SAMPLED)
    tiny_llama.clear_cache()
    trace = TokenTrace()
    _, first, _ = run(tiny_llama, GenerationRequest("A story about", params, trace=trace))
    _, more, _ = run(tiny_llama, GenerationRequest("A story about", params,
                                                   forced_ids=tuple(trace.ids)))
    # Everything the first generation evaluated is reused; its last token was never evaluated.
    assert more.cached_tokens == first.prompt_tokens + first.new_tokens - 1


def test_a_long_prompt_reports_progress_and_can_be_cancelled(tiny_llama):
    tiny_llama.prefill_chunk = 32
    try:
        prompt = "word " * 200
        tiny_llama.clear_cache()
        _, stats, others = run(tiny_llama, GenerationRequest(
            prompt, SamplingParams(max_new_tokens=2, seed=0)))
        progress = [item for item in others if isinstance(item, Progress)]
        assert [p.done for p in progress] == sorted(p.done for p in progress)
        assert progress[-1].done == progress[-1].total == stats.prompt_tokens
        tiny_llama.clear_cache()
        stream = tiny_llama.stream(GenerationRequest(prompt + "x", SamplingParams(
            max_new_tokens=2, seed=0)))
        for item in stream:
            if isinstance(item, Progress):
                tiny_llama.cancel()  # Esc after the first chunk
            if isinstance(item, GenerationStats):
                assert item.finish_reason == "cancelled" and item.new_tokens == 0
                break
        else:
            pytest.fail("no stats after a cancelled prefill")
        assert len(tiny_llama.cached) < stats.prompt_tokens  # it stopped midway
    finally:
        tiny_llama.prefill_chunk = 512


def test_sampling_runs_torch_on_one_thread_and_restores_the_callers(tiny_llama):
    """Each step's processors run on one torch thread (a split vocab-sized op waits on a busy
    machine's descheduled thread), and the caller's thread count comes back after each."""
    import torch

    from repl.token_probs import TokenTrace

    seen: list[int] = []

    class CountingTrace(TokenTrace):
        def record(self, token_id, scores):
            seen.append(torch.get_num_threads())
            super().record(token_id, scores)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(tiny_llama, GenerationRequest("Once upon", SamplingParams(
            seed=2, max_new_tokens=4, **SAMPLED), trace=CountingTrace()))
        assert seen == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_stop_strings_end_the_text_before_them(tiny_llama):
    params = SamplingParams(seed=5, max_new_tokens=30, **SAMPLED)
    text, _, _ = run(tiny_llama, GenerationRequest("Once", params))
    stop = text[5:8]
    assert stop.strip(), text
    cut, stats, _ = run(tiny_llama, GenerationRequest("Once", params.replace(stop=(stop,))))
    assert stats.finish_reason == "stop" and cut == text[: text.index(stop)]


def test_forced_tokens_continue_from_the_forced_prefix(tiny_llama):
    params = SamplingParams(seed=9, max_new_tokens=6, **SAMPLED)
    forced = tuple(tiny_llama.tokenizer(" the lighthouse", add_special_tokens=False).input_ids)
    request = GenerationRequest("Once", params, forced_ids=forced)
    ids, _ = tiny_llama.encode(request)
    assert ids[-len(forced):] == list(forced)
    assert run(tiny_llama, request)[0] == run(tiny_llama, request)[0]


def test_the_tokenizer_matches_transformers(tiny_model_dir, tiny_loaded):
    from repl.engine.tokenizer import FastTokenizer

    fast = FastTokenizer.from_dir(tiny_model_dir)
    slow = tiny_loaded.tokenizer
    for text in ["Hello world", "  spaces\n\nand\ttabs", "👩‍👩‍👧 ünïcödé", ""]:
        ids = fast(text).input_ids
        assert ids == slow(text).input_ids
        assert fast.decode(ids) == slow.decode(ids)
    assert fast.eos_token_id == slow.eos_token_id


@pytest.mark.slow
def test_the_default_models_chat_template_matches_transformers(default_loaded, default_llama):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How"}]
    for chat, kwargs in [(messages[:2], {"add_generation_prompt": True}),
                         (messages, {"continue_final_message": True})]:
        expected = default_loaded.tokenizer.apply_chat_template(chat, tokenize=True, **kwargs)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert default_llama.tokenizer.apply_chat_template(chat, **kwargs) == list(expected)


@pytest.mark.slow
def test_the_default_model_answers_in_chat_on_llama_cpp(default_llama):
    request = GenerationRequest.chat([{"role": "user", "content": "What is the capital of "
                                                                  "France?"}],
                                     SamplingParams(max_new_tokens=20, seed=0,
                                                    do_sample=False, temperature=0.0))
    text, stats, _ = run(default_llama, request)
    assert "Paris" in text and stats.finish_reason in ("eos", "length")


def test_auto_picks_llama_cpp_and_says_why_when_it_cannot(tiny_model_dir, tmp_path):
    backend = open_backend(str(tiny_model_dir), backend="auto", threads=1)
    assert backend.info.backend == "llama.cpp"
    backend.close()
    plain = open_backend(str(tiny_model_dir), backend="transformers")
    assert plain.info.backend == "transformers" and not plain.info.note
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (odd / name).write_bytes((tiny_model_dir / name).read_bytes())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "bogus"}))
    from repl.engine.llama import unavailable_reason

    assert unavailable_reason(str(odd)) == "llama.cpp does not run 'bogus' models"


def test_conversion_is_cached_by_content(tiny_model_dir):
    from repl.engine.convert import gguf_model

    first = gguf_model(str(tiny_model_dir))
    assert first.gguf.is_file() and gguf_model(str(tiny_model_dir)).gguf == first.gguf


def test_importing_the_core_pulls_in_no_face_and_no_runtime():
    code = ("import sys; import repl.engine, repl.engine.llama, repl.engine.convert, "
            "repl.session, repl.conversation, repl.params, repl.models, repl.token_probs; "
            "bad = [m for m in ('textual', 'prompt_toolkit', 'torch', 'transformers', "
            "'llama_cpp') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_a_trim_notice_comes_first(tiny_llama):
    params = SamplingParams(max_new_tokens=8, seed=0)
    _, _, others = run(tiny_llama, GenerationRequest("word " * 400, params))
    assert isinstance(others[0], Notice) and "dropped" in others[0].message


def test_amx_builds_open_models_without_extra_buffers(tiny_model_dir, monkeypatch):
    """Where llama.cpp would run its AMX kernels (a segfault on some Xeons), models are opened
    with extra buffer types off, the defaults are restored after, and the model still runs."""
    import llama_cpp.llama as llama_module

    from repl.engine import llama_open
    from repl.engine.convert import gguf_model

    gguf = gguf_model(str(tiny_model_dir)).gguf
    defaults = llama_module.llama_cpp.llama_model_default_params
    monkeypatch.setattr(llama_open, "build_has_amx", lambda: True)
    llm = llama_open.open_llama(gguf, n_ctx=64, verbose=False)
    assert llm.model_params.use_extra_bufts is False
    assert llama_module.llama_cpp.llama_model_default_params is defaults
    llm.eval(llm.tokenize(b"hello there"))  # the decode that crashed on the AMX path
    monkeypatch.setattr(llama_open, "build_has_amx", lambda: False)
    assert llama_open.open_llama(gguf, n_ctx=64, verbose=False).model_params.use_extra_bufts
