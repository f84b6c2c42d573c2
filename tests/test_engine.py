import threading

import pytest

from repl.engine import GenerationRequest, GenerationStats, Generator, Notice
from repl.errors import TextgenError
from repl.params import SamplingParams, preset

GREEDY = preset("greedy")


def collect(generator, request):
    items = list(generator.stream(request))
    assert isinstance(items[-1], GenerationStats)
    text = "".join(i for i in items if isinstance(i, str))
    return text, items[-1], items


def test_stream_yields_text_chunks_then_stats(tiny_generator):
    text, stats, items = collect(
        tiny_generator, GenerationRequest("Hello", GREEDY.replace(max_new_tokens=20)))
    chunks = [i for i in items if isinstance(i, str)]
    assert len(chunks) > 1, "text should arrive in pieces, not at the end"
    assert stats.new_tokens == 20 and stats.finish_reason == "length"
    assert stats.prompt_tokens == 1 and stats.ttft_s is not None and stats.tokens_per_s > 0
    assert text == tiny_generator.tokenizer.decode(
        tiny_generator.tokenizer(text).input_ids)  # decodes cleanly


def test_same_seed_same_text_and_a_drawn_seed_is_recorded(tiny_generator):
    params = SamplingParams(max_new_tokens=25, temperature=1.0, top_k=0, top_p=1.0)
    first, stats1, _ = collect(tiny_generator, GenerationRequest("The", params.replace(seed=11)))
    again, _, _ = collect(tiny_generator, GenerationRequest("The", params.replace(seed=11)))
    other, _, _ = collect(tiny_generator, GenerationRequest("The", params.replace(seed=12)))
    assert first == again and stats1.seed == 11
    assert first != other
    drawn, stats, _ = collect(tiny_generator, GenerationRequest("The", params))
    replay, _, _ = collect(tiny_generator,
                           GenerationRequest("The", params.replace(seed=stats.seed)))
    assert drawn == replay


def test_stop_string_ends_the_text_before_it(tiny_generator):
    full, _, _ = collect(tiny_generator, GenerationRequest("A", GREEDY.replace(max_new_tokens=30)))
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3
    text, stats, _ = collect(
        tiny_generator,
        GenerationRequest("A", GREEDY.replace(max_new_tokens=30, stop=(stop, "\x00never"))))
    assert text == full[: full.index(stop)]
    assert stats.finish_reason == "stop"


def test_cancel_stops_within_one_token_and_keeps_text(tiny_generator):
    calls = []
    hook = tiny_generator.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        text, at_cancel = "", None
        stream = tiny_generator.stream(GenerationRequest("Once", GREEDY.replace(
            max_new_tokens=200)))
        for item in stream:
            if isinstance(item, str):
                text += item
                if at_cancel is None and len(calls) >= 5:
                    tiny_generator.cancel()
                    at_cancel = len(calls)
            elif isinstance(item, GenerationStats):
                stats = item
    finally:
        hook.remove()
    assert stats.finish_reason == "cancelled"
    assert len(calls) - at_cancel <= 1, "generation ran on after cancel()"
    assert text and stats.new_tokens < 200


def test_abandoning_the_stream_stops_the_worker(tiny_generator):
    stream = tiny_generator.stream(GenerationRequest("Hi", GREEDY.replace(max_new_tokens=200)))
    next(item for item in stream if isinstance(item, str))
    stream.close()
    assert not tiny_generator.busy
    assert not [t for t in threading.enumerate() if t.name == "textgen-generate"]


def test_one_generation_at_a_time(tiny_generator):
    stream = tiny_generator.stream(GenerationRequest("Hi", GREEDY.replace(max_new_tokens=50)))
    next(stream)
    with pytest.raises(TextgenError, match="already running"):
        next(tiny_generator.stream(GenerationRequest("Hi", GREEDY)))
    stream.close()


def test_long_prompt_is_trimmed_from_the_start_with_a_notice(tiny_generator):
    context = tiny_generator.info.context_length  # 256 for the tiny model
    prompt = " ".join(f"word{i}" for i in range(400))
    assert tiny_generator.count_tokens(prompt) > context
    _, stats, items = collect(tiny_generator,
                              GenerationRequest(prompt, GREEDY.replace(max_new_tokens=16)))
    assert isinstance(items[0], Notice) and "dropped its first" in items[0].message
    assert stats.prompt_tokens == context - 16
    assert stats.trimmed_tokens == tiny_generator.count_tokens(prompt) - (context - 16)


def test_max_new_tokens_beyond_the_context_is_refused(tiny_generator):
    with pytest.raises(ValueError, match="context of 256"):
        list(tiny_generator.stream(GenerationRequest("x", GREEDY.replace(max_new_tokens=300))))


def test_worker_exceptions_reach_the_caller(tiny_loaded, monkeypatch):
    generator = Generator(tiny_loaded)

    def broken(**kwargs):
        raise RuntimeError("out of memory in the worker")

    monkeypatch.setattr(generator.model, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory in the worker"):
        list(generator.stream(GenerationRequest("x", GREEDY)))
    assert not generator.busy


def test_chat_needs_a_chat_template(tiny_generator):
    request = GenerationRequest.chat([{"role": "user", "content": "hi"}], GREEDY)
    with pytest.raises(TextgenError, match="has no chat template"):
        list(tiny_generator.stream(request))


def test_empty_prompt_starts_from_the_start_token(tiny_generator):
    _, stats, _ = collect(tiny_generator, GenerationRequest("", GREEDY.replace(max_new_tokens=5)))
    assert stats.prompt_tokens == 1 and stats.new_tokens == 5


@pytest.mark.slow
def test_default_model_completes_and_chats(default_loaded):
    generator = Generator(default_loaded)
    text, stats, _ = collect(generator, GenerationRequest(
        "The capital of France is", GREEDY.replace(max_new_tokens=8)))
    assert "Paris" in text
    answer, stats, _ = collect(generator, GenerationRequest.chat(
        [{"role": "user", "content": "What is the capital of France? One word."}],
        GREEDY.replace(max_new_tokens=20)))
    assert "Paris" in answer and stats.finish_reason == "eos"
    continued, _, _ = collect(generator, GenerationRequest.chat(
        [{"role": "user", "content": "Count from one to five."},
         {"role": "assistant", "content": "One, two, three,"}],
        GREEDY.replace(max_new_tokens=6)))
    assert "four" in continued.lower()
