"""URL model specs: the TUI, the plain REPL and `generate` drive a live `textgen api` through
the remote backend; inspect mode from its logprobs; one clear line for every failure."""

from __future__ import annotations

import io
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from repl.cli import main
from repl.conversation import Conversation
from repl.engine import GenerationRequest, GenerationStats, Notice, open_backend
from repl.engine.base import Backend
from repl.engine.remote import COMPLETION_TOP_LOGPROBS, NO_PROBS, RemoteBackend
from repl.errors import TextgenError
from repl.models import ModelInfo
from repl.params import SamplingParams
from repl.session import Session, load_session
from repl.token_probs import TokenTrace, token_spans
from tests.live_api import add_chat_template, start_api

KEY = "remote-test-key"


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    return add_chat_template(tiny_model_dir, tmp_path_factory.mktemp("chat") / "tiny-chat")


@pytest.fixture(scope="module")
def server(chat_model_dir):
    live = start_api("--model", str(chat_model_dir), "--backend", "transformers",
                     env={"TEXTGEN_API_KEY": KEY})
    yield live
    live.stop()


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def generate(capsys, url: str, *argv: str) -> tuple[int, str, str]:
    status = main(["generate", "--model", url, *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.slow
def test_generate_streams_and_the_same_seed_gives_the_same_text(server, keyed, capsys):
    argv = ("Once upon a time", "-n", "10", "-t", "1.0", "--seed", "4")
    status, first, err = generate(capsys, server.url, *argv)
    assert status == 0 and first.strip(), err
    assert "seed 4" in err and "10 tokens" in err
    assert generate(capsys, server.url, *argv)[1] == first
    assert generate(capsys, server.url + "#tiny-chat", *argv[:-1], "5")[1] != first


@pytest.mark.slow
def test_the_key_comes_from_the_flag_too_and_a_wrong_one_is_one_line(server, monkeypatch,
                                                                      capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    status, out, _ = generate(capsys, server.url, "Hi", "-n", "3", "--api-key", KEY)
    assert status == 0 and out.strip()
    status, _, err = generate(capsys, server.url, "Hi", "--api-key", "wrong")
    assert status == 2
    assert err == (f"textgen: error: the server at {server.url.split('/')[2]} refused the API "
                   "key (401): give the right one with --api-key or $OPENAI_API_KEY.\n")


@pytest.mark.slow
def test_chat_stop_strings_and_a_missing_model(server, keyed, capsys):
    status, text, err = generate(capsys, server.url, "Hello", "--chat", "-n", "12", "-t", "0")
    assert status == 0 and text.strip()
    stop = text.strip()[2:4]
    status, stopped, err = generate(capsys, server.url, "Hello", "--chat", "-n", "12", "-t", "0",
                                    "--stop", stop)
    assert status == 0 and stopped.rstrip("\n") == text[:text.index(stop)] and "· stop" in err
    status, _, err = generate(capsys, server.url + "#other", "Hello")
    assert status == 2 and err.startswith("textgen: error: the server at ")
    assert "has no model 'other'; it has tiny-chat." in err


def test_an_unreachable_server_is_one_line(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    status, _, err = generate(capsys, f"http://127.0.0.1:{port}/v1", "Hi")
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"textgen: error: cannot reach the server at 127.0.0.1:{port}")


@pytest.mark.slow
def test_inspect_mode_records_the_servers_logprobs(server, keyed):
    backend = open_backend(server.url)
    assert isinstance(backend, RemoteBackend) and backend.info.context_length == 256
    for messages in (None, ({"role": "user", "content": "Hi"},)):
        trace = TokenTrace()
        request = GenerationRequest(prompt="The cat", messages=messages, trace=trace,
                                    params=SamplingParams(max_new_tokens=6, temperature=0))
        text, stats = backend.generate(request)
        steps = trace.snapshot()
        assert len(steps) == stats.new_tokens == 6
        assert backend.tokenizer.decode([s.token_id for s in steps]) == text
        assert all(s.top_ids[0] == s.token_id for s in steps)  # greedy: the top one
        assert [b - a for a, b in token_spans(backend.tokenizer, trace.ids, text)] == \
            [len(backend.tokenizer.decode([i])) for i in trace.ids]
    backend.close()


@pytest.mark.slow
def test_the_plain_repl_drives_a_url(server, keyed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there\n/regen\n"))
    assert main(["--plain", "--model", server.url, "--sessions-dir", str(tmp_path), "-n", "6",
                 "--seed", "3"]) == 0
    out = capsys.readouterr()
    (path,) = tmp_path.glob("*.json")
    (turn,) = load_session(path).turns
    assert [c.seed for c in turn.completions] == [3, 4]
    assert out.out == f"{turn.completions[0].text}\n{turn.completions[1].text}\n"
    assert load_session(path).model["spec"] == server.url


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_tui_streams_from_a_url_and_inspects_its_tokens(server, tmp_path):
    from repl.tui.app import TextgenApp
    from repl.tui.screens.inspect_view import InspectScreen
    from tests.test_tui import SIZE, submit, until

    app = TextgenApp(server.url, sessions_dir=tmp_path, api_key=KEY,
                     params=SamplingParams(seed=7, max_new_tokens=8))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.conversation.generator is not None)
        await pilot.press("f2")
        await submit(pilot, app, "Once upon a time")
        completion = app.conversation.session.turns[0].completion
        assert completion.text and completion.stats.new_tokens == 8
        assert completion.stats.engine == "remote" and app.status.model == "tiny-chat"
        assert len(completion.traces[0][1].steps) == 8
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        # /v1/completions sends at most 5 alternatives (OpenAI's limit) per token
        assert app.screen.query_one("#inspect-alts").row_count == COMPLETION_TOP_LOGPROBS
    same = RemoteBackend.open(server.url, api_key=KEY).generate(GenerationRequest(
        prompt="Once upon a time", params=SamplingParams(seed=7, max_new_tokens=8)))[0]
    assert same == completion.text  # the same seed through another face: the same text


@pytest.mark.slow
def test_a_server_killed_mid_stream_keeps_the_text_and_says_so(chat_model_dir, tmp_path):
    live = start_api("--model", str(chat_model_dir), "--backend", "transformers")
    try:
        backend = open_backend(live.url)
        session = Session(model={"spec": live.url, "name": "tiny-chat"},
                          params=SamplingParams(max_new_tokens=250, seed=1))
        conversation = Conversation(session, backend, sessions_dir=tmp_path)
        received: list[str] = []
        with pytest.raises(TextgenError) as caught:
            for item in conversation.submit("Tell me a long story"):
                if isinstance(item, str):
                    received.append(item)
                    if len(received) == 1:
                        live.kill()
    finally:
        live.kill()
    assert str(caught.value).startswith(f"lost the connection to the server at "
                                        f"{live.url.split('/')[2]} in the middle of the reply")
    assert str(caught.value).endswith("the text so far is kept.")
    assert "\n" not in str(caught.value)
    completion = load_session(conversation.path).turns[0].completion
    assert completion.text == "".join(received) and completion.finish == "error"
    assert 0 < len(received) < 250


class NoProbs(Backend):
    """A server engine that returns text but no token probabilities."""

    name = "noprobs"

    def __init__(self) -> None:
        super().__init__()
        self.info = ModelInfo(spec="noprobs", name="noprobs", parameters=0, context_length=None,
                              device="cpu", dtype="none", has_chat_template=True,
                              backend="noprobs")
        self.tokenizer = None

    def _stream(self, request: GenerationRequest) -> Iterator:
        yield "some text"
        yield GenerationStats(prompt_tokens=1, new_tokens=2, ttft_s=0.0, tokens_per_s=None,
                              total_s=0.0, finish_reason="eos", seed=0, engine="noprobs")


@pytest.fixture
def no_probs_url():
    import uvicorn

    from repl.api.app import create_app

    ready = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(create_app(NoProbs(), on_ready=ready.set),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(60)
    listener.close()


@pytest.mark.anyio
async def test_f3_says_when_the_server_returns_no_probabilities(no_probs_url, tmp_path):
    from repl.tui.app import TextgenApp
    from repl.tui.screens.inspect_view import InspectScreen
    from tests.test_tui import SIZE, submit, until

    backend = open_backend(no_probs_url)
    items = list(backend.stream(GenerationRequest(prompt="x", trace=TokenTrace())))
    assert Notice(NO_PROBS) in items and "some text" in items
    app = TextgenApp(no_probs_url, sessions_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.conversation.generator is not None)
        await pilot.press("f2")
        await submit(pilot, app, "Hello")
        await pilot.press("f3")
        await pilot.pause()
        assert not isinstance(app.screen, InspectScreen)
        messages = [n.message for n in app._notifications]
        assert any("returns no token probabilities" in m for m in messages)
