"""`textgen api`: the official openai client against a live server on loopback (the tiny random
model, transformers backend), OpenAI's error shapes, the bounded queue and dropped clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from repl.api.app import ApiConfig, create_app
from repl.api.cli import api_key
from repl.cli import build_parser, main
from repl.engine.base import Backend
from repl.engine.request import GenerationRequest, GenerationStats, StreamItem
from repl.models import ModelInfo
from repl.session import load_session
from tests.live_api import add_chat_template, start_api

KEY = "test-key-123"


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return add_chat_template(tiny_model_dir, tmp_path_factory.mktemp("chat") / "tiny-chat")


@pytest.fixture(scope="module")
def server(chat_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("api-logs")
    live = start_api("--model", str(chat_model_dir), "--backend", "transformers",
                     "--api-key", KEY, "--log-sessions", str(logs), "-n", "16")
    live.logs = logs
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.mark.slow
def test_models_lists_the_served_model(client):
    (card,) = client.models.list().data
    assert card.id == "tiny-chat" and card.model_extra["context_length"] == 256


@pytest.mark.slow
def test_streaming_chat_matches_the_same_request_unstreamed(client):
    ask = {"model": "tiny-chat", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hello"}],
           "max_tokens": 10, "seed": 5, "temperature": 0.9}
    chunks = list(client.chat.completions.create(
        **ask, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    usage = chunks[-1].usage
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert usage is not None and usage.completion_tokens == 10 and usage.prompt_tokens > 0
    whole = client.chat.completions.create(**ask)
    assert streamed and whole.choices[0].message.content == streamed
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 10


@pytest.mark.slow
def test_completion_logprobs_are_the_greedy_tokens(client):
    answer = client.completions.create(model="tiny-chat", prompt="The cat", max_tokens=6,
                                       temperature=0, logprobs=3)
    choice = answer.choices[0]
    probs = choice.logprobs
    assert len(probs.tokens) == len(probs.token_logprobs) == answer.usage.completion_tokens == 6
    for token, value, top in zip(probs.tokens, probs.token_logprobs, probs.top_logprobs,
                                 strict=True):
        assert 1 <= len(top) <= 3 and value <= 0
        assert max(top.values()) == pytest.approx(value)  # greedy: the chosen one is the top
        assert top.get(token) == pytest.approx(value)
    assert probs.text_offset[0] == len("The cat")
    assert "".join(probs.tokens) == choice.text


@pytest.mark.slow
def test_chat_logprobs_streamed_cover_every_token(client):
    chunks = list(client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        seed=1, logprobs=True, top_logprobs=2, stream=True))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs
               for e in c.choices[0].logprobs.content]
    assert len(entries) == 5
    assert all(len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in entries)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_text(client):
    def text(seed: int) -> str:
        return client.completions.create(model="tiny-chat", prompt="Once", max_tokens=12,
                                          temperature=1.0, seed=seed).choices[0].text

    first = text(11)
    assert text(11) == first and text(12) != first


@pytest.mark.slow
def test_n_choices_and_textgen_parameters(client):
    answer = client.completions.create(
        model="tiny-chat", prompt="A", max_tokens=4, n=2, seed=3, temperature=1.0,
        extra_body={"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.2,
                    "no_repeat_ngram_size": 2})
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].text != answer.choices[1].text
    assert answer.usage.completion_tokens == 8


@pytest.mark.slow
def test_stop_strings_end_the_text(client):
    free = client.completions.create(model="tiny-chat", prompt="Go", max_tokens=12,
                                      temperature=0).choices[0].text
    stop = free[3:6]
    assert stop.strip()
    answer = client.completions.create(model="tiny-chat", prompt="Go", max_tokens=12,
                                        temperature=0, stop=[stop])
    assert answer.choices[0].text == free[:free.index(stop)]
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_a_wrong_or_missing_key_is_401(server):
    with openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0) as bad, \
            pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401
    assert caught.value.response.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.post(server.url + "/completions", json={"prompt": "x"})
    assert missing.status_code == 401 and "Missing API key" in missing.json()["error"]["message"]


@pytest.mark.slow
def test_bad_values_are_400_in_openais_error_shape(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-chat", prompt="x", temperature=-1)
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "temperature"
    assert error["message"] == "temperature must be 0 or more (0 means greedy)."
    for bad in ({"max_tokens": 256}, {"extra_body": {"top_k": -1}}, {"n": 99},
                {"prompt": 5}, {"presence_penalty": 0.5}, {"logprobs": 50}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(**{"model": "tiny-chat", "prompt": "x", **bad})
        assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.slow
def test_an_unknown_model_or_path_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-9", prompt="x")
    assert caught.value.response.json()["error"]["code"] == "model_not_found"
    answer = httpx.get(server.url + "/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404 and "error" in answer.json()


@pytest.mark.slow
def test_requests_are_logged_as_sessions(client, server):
    client.chat.completions.create(
        model="tiny-chat", max_tokens=3, seed=2,
        messages=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                  {"role": "user", "content": "logged question"}])
    sessions = [load_session(p) for p in server.logs.glob("*.json")]
    (session,) = [s for s in sessions if s.turns[-1].prompt == "logged question"]
    earlier, last = session.turns
    assert (earlier.prompt, earlier.completion.text) == ("first", "ok")
    assert last.mode == "chat" and last.completion.stats.new_tokens == 3
    assert last.completion.params.seed == 2 and session.extra["api"]["endpoint"] == "chat"


@pytest.mark.slow
def test_a_model_without_chat_template_refuses_chat_with_400(tiny_model_dir):
    live = start_api("--model", str(tiny_model_dir), "--backend", "transformers")
    try:
        with openai.OpenAI(base_url=live.url, api_key="none", max_retries=0) as plain:
            with pytest.raises(openai.BadRequestError, match="no chat template"):
                plain.chat.completions.create(model="tiny-gpt2",
                                              messages=[{"role": "user", "content": "x"}])
            assert plain.completions.create(model="tiny-gpt2", prompt="x",
                                            max_tokens=2).choices[0].text
    finally:
        live.stop()


# --- the command line -------------------------------------------------------------------------


def test_defaults_are_loopback_8000_and_other_hosts_need_a_key(monkeypatch, capsys):
    monkeypatch.delenv("TEXTGEN_API_KEY", raising=False)
    args = build_parser().parse_args(["api"])
    assert (args.host, args.port, args.api_key, api_key(args)) == ("127.0.0.1", 8000, None, None)
    assert main(["api", "--host", "0.0.0.0"]) == 2
    assert "needs an API key" in capsys.readouterr().err
    monkeypatch.setenv("TEXTGEN_API_KEY", "from-env")
    assert api_key(build_parser().parse_args(["api", "--host", "0.0.0.0"])) == "from-env"


def test_a_taken_port_is_one_clear_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["api", "--port", str(port), "--model", "nowhere/none"]) == 2
    assert capsys.readouterr().err.startswith(f"textgen: error: cannot listen on 127.0.0.1:{port}")


# --- the queue and dropped clients, with an engine the test steps by hand ----------------------


class GatedBackend(Backend):
    """Yields one chunk, then waits until the test releases it or the generation is
    cancelled; records how each generation ended."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.info = ModelInfo(spec="gated", name="gated", parameters=0, context_length=None,
                              device="cpu", dtype="none", has_chat_template=True,
                              backend="gated")
        self.tokenizer = None
        self.release = threading.Event()
        self.wake = threading.Event()
        self.started = threading.Semaphore(0)
        self.endings: list[str] = []

    def cancel(self) -> None:
        super().cancel()
        self.wake.set()

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        self.wake.clear()
        self.started.release()
        yield f"<{request.prompt}>"
        while not (self.release.is_set() or self._cancel.is_set()):
            self.wake.wait()
        ending = "cancelled" if self._cancel.is_set() else "length"
        self.endings.append(ending)
        if ending == "length":
            yield " done"
        yield GenerationStats(prompt_tokens=1, new_tokens=2, ttft_s=0.0, tokens_per_s=None,
                              total_s=0.0, finish_reason=ending, seed=0, engine="gated")

    def let_go(self) -> None:
        self.release.set()
        self.wake.set()


@contextlib.contextmanager
def serving(backend: Backend, config: ApiConfig) -> Iterator[tuple[str, Any]]:
    """`textgen api`'s app for `backend` on a free loopback port, in this process."""
    import uvicorn

    ready = threading.Event()
    app = create_app(backend, config, on_ready=ready.set)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        assert ready.wait(60)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", app
    finally:
        if isinstance(backend, GatedBackend):
            backend.let_go()
        server.should_exit = True
        thread.join(60)
        listener.close()


@pytest.fixture
def gated(tmp_path):
    backend = GatedBackend()
    with serving(backend, ApiConfig(max_queue=1, log_sessions=tmp_path)) as (url, app):
        yield backend, url, app.state.served.runner


def wait_for(condition, what: str, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_full_queue_answers_429_with_retry_after(gated):
    backend, url, runner = gated
    with openai.OpenAI(base_url=url, api_key="none", max_retries=0) as client:
        running = client.completions.create(model="gated", prompt="a", stream=True)
        assert next(iter(running)).choices[0].text == "<a>"  # the engine's one slot is taken
        waiting: dict[str, str] = {}
        waiter = threading.Thread(target=lambda: waiting.update(text=client.completions.create(
            model="gated", prompt="b").choices[0].text))
        waiter.start()
        wait_for(lambda: runner.waiting == 1, "the second request to queue")
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model="gated", prompt="c")
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        assert caught.value.response.json()["error"]["type"] == "rate_limit_error"
        backend.let_go()
        assert "".join(c.choices[0].text for c in running) == " done"
        waiter.join(60)
        assert waiting["text"] == "<b> done"
        assert backend.endings == ["length", "length"]


def test_a_client_that_drops_mid_stream_frees_its_slot(gated, tmp_path):
    backend, url, runner = gated
    logs = tmp_path
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/completions",
                         json={"prompt": "dropped", "stream": True}) as response:
            assert "<dropped>" in next(response.iter_lines())
            assert backend.started.acquire(timeout=60)
        # The connection is closed while the generation waits on the test: only the cancel
        # that the disconnect causes can end it and let the next request start.
        answer: dict[str, str] = {}
        after = threading.Thread(target=lambda: answer.update(http.post(
            f"{url}/completions", json={"prompt": "next"}).json()["choices"][0]))
        after.start()
        assert backend.started.acquire(timeout=60)  # the next one is running
        assert backend.endings == ["cancelled"]
        backend.let_go()
        after.join(60)
    assert answer["text"] == "<next> done"
    assert backend.endings == ["cancelled", "length"]
    assert runner.running == 0 and runner.waiting == 0
    logged = {s.turns[0].prompt: s.turns[0].completion for s in map(load_session, logs.glob("*"))}
    assert (logged["dropped"].text, logged["dropped"].finish) == ("<dropped>", "cancelled")


def test_a_client_that_drops_a_whole_answer_frees_its_slot(gated):
    backend, url, runner = gated
    port = int(url.split(":")[2].split("/")[0])
    body = b'{"prompt": "gone"}'
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert backend.started.acquire(timeout=60)
    # Closed before any answer: the generation, still waiting on the test, must be cancelled.
    wait_for(lambda: backend.endings == ["cancelled"], "the dropped request to be cancelled")
    wait_for(lambda: runner.running == 0, "the slot to be freed")


def test_only_allowed_web_origins_may_call_it():
    asked = {"Origin": "https://lmg-anon.github.io", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}
    for origins, allowed in (((), False), (("https://lmg-anon.github.io",), True)):
        with serving(GatedBackend(), ApiConfig(allow_origins=origins)) as (url, _):
            preflight = httpx.options(f"{url}/completions", headers=asked)
            models = httpx.get(f"{url}/models", headers={"Origin": asked["Origin"]})
        granted = preflight.headers.get("access-control-allow-origin")
        assert (granted == asked["Origin"]) is allowed and models.status_code == 200
        assert ("access-control-allow-origin" in models.headers) is allowed
