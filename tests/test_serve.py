"""`textgen serve`: the app command it runs per tab, loopback by default, clear errors, the page."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest

from repl.cli import build_parser, main, run_interactive
from repl.serve import app_command, is_loopback
from tests import waiting


def parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_defaults_bind_to_loopback_port_8000_and_help_says_so(capsys):
    args = parse()
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8000, "default")
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "binds to 127.0.0.1 (this machine only)" in " ".join(capsys.readouterr().out.split())


def test_app_command_is_textgen_forced_into_the_tui(tiny_model_dir, tmp_path, monkeypatch):
    """An engine per tab: each app gets the model (absolute) and the engine's flags."""
    monkeypatch.chdir(tiny_model_dir.parent)
    args = parse("--model", tiny_model_dir.name, "--seed", "3", "-t", "0.5", "--stop", "END",
                 "--chat", "--sessions-dir", str(tmp_path), "--device", "cpu",
                 "--engine-per-tab")
    command = app_command(args)
    assert command[:4] == [sys.executable, "-m", "repl", "--tui"]
    # A relative model directory is passed on absolute, so the app finds it from anywhere.
    assert command[command.index("--model") + 1] == str(tiny_model_dir.resolve())
    for flag, value in (("--seed", "3"), ("--temperature", "0.5"), ("--stop", "END"),
                        ("--sessions-dir", str(tmp_path.resolve())), ("--device", "cpu")):
        assert command[command.index(flag) + 1] == value
    assert "--chat" in command and "--top-k" not in command
    # What the app process receives parses back to the same choices.
    app_args = build_parser().parse_args(command[3:])
    assert app_args.tui and app_args.seed == 3 and app_args.stop == ["END"]


def test_a_shared_engine_loads_the_model_and_the_apps_only_sample(tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    """By default the engine (`textgen api` on a free loopback port) gets the model and the
    engine flags; each app gets the sampling flags, and the engine's URL from the server."""
    from repl.serve.cli import policy_from_args, shared_engine

    monkeypatch.chdir(tiny_model_dir.parent)
    args = parse("--model", tiny_model_dir.name, "--seed", "3", "--device", "cpu",
                 "--threads", "2", "--sessions-dir", str(tmp_path), "--max-sessions", "30")
    command = app_command(args)
    assert "--model" not in command and "--device" not in command and "--threads" not in command
    assert command[command.index("--seed") + 1] == "3"
    engine = shared_engine(args, policy_from_args(args), args.max_sessions)
    assert engine.argv[1:8] == ["-m", "repl", "api", "--host", "127.0.0.1", "--port", "0"]
    for flag, value in (("--model", str(tiny_model_dir.resolve())), ("--device", "cpu"),
                        ("--threads", "2"), ("--max-queue", "60")):
        assert engine.argv[engine.argv.index(flag) + 1] == value
    assert "--seed" not in engine.argv  # the apps send their sampling with every request
    assert len(engine.key) >= 24 and not any(engine.key in a for a in engine.argv)
    # Told not to share, allowed to load models of its own, or a server already: no engine.
    for flags in (["--engine-per-tab"], ["--models-dir", str(tiny_model_dir.parent)],
                  ["--model", "http://127.0.0.1:9/v1"]):
        other = parse("--model", tiny_model_dir.name, *flags)
        assert shared_engine(other, policy_from_args(other), 4) is None, flags
        assert "--model" in app_command(other), flags


def test_tui_flag_picks_the_tui_even_without_a_terminal(monkeypatch):
    fake = types.ModuleType("repl.tui.app")
    fake.run = lambda args: 42
    monkeypatch.setitem(sys.modules, "repl.tui.app", fake)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    assert run_interactive(build_parser().parse_args(["--tui"])) == 42


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
     ("0.0.0.0", False), ("192.168.1.5", False), ("::", False), ("example.org", False)],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "models/does-not-exist"], "no such model directory or file"),
        (["--port", "70000"], "port 70000 is out of range"),
        (["--top-p", "2"], "top_p"),
        (["--host", "no-such-host.invalid"], "cannot listen on 'no-such-host.invalid'"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textgen: error:") and message in err and "Traceback" not in err


def test_a_taken_port_says_so(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_an_open_host_gets_a_one_line_warning(capsys, monkeypatch, host, warned):
    from repl.serve.server import TextgenServer

    served = []
    monkeypatch.setattr(TextgenServer, "serve", lambda self: served.append(self))
    assert main(["serve", "--host", host, "--port", str(free_port())]) == 0
    err = capsys.readouterr().err
    assert served and served[0].command.startswith(sys.executable)
    warning = (f"textgen: warning: listening on {host}: anyone who can reach it and has the "
               "token can use the model.")
    assert (err == warning + "\n") is warned and (err == "") is not warned


@pytest.mark.slow
@pytest.mark.timeout(1800)  # its waits have limits of their own (minutes, on a loaded machine)
@pytest.mark.parametrize("per_tab", [False, True], ids=["shared-engine", "engine-per-tab"])
def test_a_real_tab_opens_the_tui_and_its_process_ends_when_the_tab_closes(tiny_model_dir,
                                                                           tmp_path, per_tab):
    """`textgen serve` as a user runs it: the printed URL (with its token) opens the page, the
    websocket runs the real TUI, and closing it ends the app's process within seconds. On the
    shared engine the tab's app is a light client: no torch, the engine's key only in its
    environment; with an engine per tab the app has loaded the model itself."""
    import asyncio
    import re

    from aiohttp import ClientSession

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "repl", "serve", "--port", str(port), "--model",
         str(tiny_model_dir), "--sessions-dir", str(tmp_path / "sessions"),
         *(["--engine-per-tab"] if per_tab else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        banner = _banner(server)  # printed once the server (and its engine) is up
        url = re.search(r"(http://\S+/\?token=\S+)", banner)
        assert url, banner
        url = url.group(1)
        token = url.split("token=", 1)[1]
        assert url.startswith(f"http://127.0.0.1:{port}/?token=") and len(token) >= 24
        page = _get(url, deadline=time.monotonic() + 120)
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page

        async def tab() -> int:
            async with ClientSession() as client:
                ws = await client.ws_connect(f"ws://127.0.0.1:{port}/ws?token={token}"
                                             "&width=100&height=30")
                seen = ""
                # The status bar names the model and what runs it once the model is ready.
                ready = re.compile(r"cpu/float32|llama\.cpp Q8_0" if per_tab else
                                   r"remote 127\.0\.0\.1:\d")
                while "tiny-gpt2" not in seen or not ready.search(seen):
                    message = await ws.receive(timeout=600)
                    assert message.type.name == "BINARY", (message, seen[-500:])
                    seen += _plain(message.data)
                apps, engines = _tabs_and_engines(server.pid)
                assert len(apps) == 1 and len(engines) == (0 if per_tab else 1)
                loaded = _maps_an_engine(apps[0].pid)
                if per_tab:
                    assert loaded, "the app of an engine-per-tab server runs its own model"
                else:
                    assert not loaded, "a tab on the shared engine loaded torch or llama.cpp"
                    tab_mb = apps[0].memory_full_info().pss / 2**20
                    assert tab_mb < 200, f"a tab on the shared engine takes {tab_mb:.0f} MB"
                    key = apps[0].environ()["OPENAI_API_KEY"]
                    assert engines[0].environ()["TEXTGEN_API_KEY"] == key
                    for process in (apps[0], engines[0]):  # never on a command line
                        assert not any(key in part for part in process.cmdline())
                await ws.close()
                return apps[0].pid

        pid = asyncio.run(tab())
        deadline = time.monotonic() + 30
        while not _gone(pid):
            assert time.monotonic() < deadline, f"tab app {pid} still runs"
            time.sleep(0.1)
        engines = _tabs_and_engines(server.pid)[1]
        assert len(engines) == (0 if per_tab else 1)  # the engine outlives a closed tab
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=120)
    assert server.returncode == 0, out  # SIGTERM is a clean exit
    assert "Traceback" not in out
    for engine in engines:
        assert _gone(engine.pid), "the engine outlived the server"


def _tabs_and_engines(pid: int):
    """The server's live children: its tabs' apps, and its shared engine."""
    import psutil

    apps, engines = [], []
    for child in _children(pid):
        try:
            command = child.cmdline()
        except psutil.Error:  # ended, or a zombie not yet reaped
            continue
        if "--tui" in command:
            apps.append(child)
        elif "api" in command:
            engines.append(child)
    return apps, engines


def _banner(server: subprocess.Popen) -> str:
    """The line with the URL: waited for as long as the model takes to load (the server says
    what it is doing before), or the server's output if it exits first."""
    lines = []
    while line := server.stdout.readline():
        lines.append(line)
        if "token=" in line:
            return line
    raise AssertionError("textgen serve exited before printing its URL: " + "".join(lines))


def _plain(data: bytes) -> str:
    import re

    return re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", data.decode("utf-8", "replace"))


def _maps_an_engine(pid: int) -> bool:
    """Whether the process has torch's or llama.cpp's library mapped (it runs a model)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "libllama" in maps


def _children(pid: int):
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _get(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- the guarded server, in process, with a fake app that speaks textual's web protocol ------

FAKE_APP = r'''
import json, os, signal, subprocess, sys
stubborn = "--stubborn" in sys.argv
if stubborn:  # ignores the quit request and SIGTERM, like an app busy in a giant redraw
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
out, inp = sys.stdout.buffer, sys.stdin.buffer
def send(payload):
    out.write(b"D" + len(payload).to_bytes(4, "big") + payload)
    out.flush()
out.write(b"__GANGLION__\n")
send(json.dumps({"pid": os.getpid(), "child": child.pid, "argv": sys.argv,
                 "columns": os.environ["COLUMNS"],
                 "rows": os.environ["ROWS"], "served": os.environ.get("TEXTGEN_SERVED"),
                 "key": os.environ.get("OPENAI_API_KEY")}).encode())
while len(head := inp.read(5)) == 5:
    payload = inp.read(int.from_bytes(head[1:], "big"))
    if head[:1] == b"M" and json.loads(payload)["type"] == "quit" and not stubborn:
        break
    send(head[:1] + payload)  # echoes what the server passed on: b"M{...}" or b"Dkeys"
'''
TOKEN = "test-token-123"
# A `textgen api` stand-in: writes the key it was given to argv[1], says it is ready, waits.
FAKE_ENGINE = r'''
import os, sys, time
open(sys.argv[1], "w").write(os.environ["TEXTGEN_API_KEY"])
print("textgen api: serving fake model at http://127.0.0.1:9/v1 (fake, API key required)",
      flush=True)
time.sleep(600)
'''


def fake_server(tmp_path, *, stubborn: bool = False, max_sessions: int = 4,
                token: str | None = TOKEN, tab_sessions: Path | None = None, engine=None):
    from repl.serve.server import TextgenServer

    script = tmp_path / "fake_app.py"
    script.write_text(FAKE_APP)
    argv = [sys.executable, str(script), *(["--stubborn"] if stubborn else [])]
    return TextgenServer(argv, host="127.0.0.1", port=0, token=token, max_sessions=max_sessions,
                         env={"TEXTGEN_SERVED": '{"model": "m"}'}, tab_sessions=tab_sessions,
                         engine=engine)


def fake_engine(tmp_path):
    from repl.serve.engine import SharedEngine
    from repl.serve.policy import ServedPolicy

    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return SharedEngine([sys.executable, str(script), str(tmp_path / "engine-key")],
                        ServedPolicy(model="/models/m"))


def serving(server, check):
    """Run `check(base_url, client)` against the server on a free port, then stop the server."""
    import asyncio

    from aiohttp import ClientSession, CookieJar
    from aiohttp.test_utils import TestServer

    async def main():
        # unsafe: keep cookies from an IP address, as browsers do
        async with TestServer(await server._make_app(), host="127.0.0.1") as test_server, \
                ClientSession(cookie_jar=CookieJar(unsafe=True)) as client:
            return await check(str(test_server.make_url("")).rstrip("/"), client)

    return asyncio.run(main())  # each wait inside has its own limit


async def first_packet(ws) -> dict:
    import json

    message = await ws.receive(timeout=waiting.LIMIT_S)  # the fake app's start
    return json.loads(message.data)


async def next_echo(ws) -> bytes:
    return (await ws.receive(timeout=waiting.LIMIT_S)).data


async def wait_gone(pids, limit_s: float = 60) -> float:
    """Seconds until every pid is gone; fails after `limit_s` saying which are left."""
    import asyncio

    start = time.monotonic()
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() - start < limit_s, f"still running: {pids}"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def test_without_the_token_nothing_but_static_files_answers(tmp_path):
    from aiohttp import WSServerHandshakeError

    async def check(base, client):
        async with client.get(f"{base}/") as page:
            assert page.status == 403 and "needs its token" in await page.text()
        async with client.get(f"{base}/?token=wrong-token") as page:
            assert page.status == 403
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect(f"{base}/ws")
        assert refused.value.status == 403
        async with client.get(f"{base}/static/js/textual.js") as script:
            assert script.status == 200
        # With the token the page opens, and leaves a cookie for its websocket and reloads.
        async with client.get(f"{base}/?token={TOKEN}") as page:
            assert page.status == 200 and "data-session-websocket-url" in await page.text()
            assert page.cookies[next(iter(page.cookies))].value == TOKEN
        ws = await client.ws_connect(f"{base}/ws")  # the cookie alone is enough
        assert (await first_packet(ws))["served"] == '{"model": "m"}'
        await ws.close()

    serving(fake_server(tmp_path), check)


def test_a_websocket_from_another_site_is_refused(tmp_path):
    from aiohttp import WSServerHandshakeError

    async def check(base, client):
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect(f"{base}/ws?token={TOKEN}",
                                    headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
        ws = await client.ws_connect(f"{base}/ws?token={TOKEN}", headers={"Origin": base})
        assert "pid" in await first_packet(ws)
        await ws.close()

    serving(fake_server(tmp_path), check)


def test_without_a_token_only_localhost_names_answer(tmp_path):
    """No token (loopback only): a rebound DNS name pointing here is still refused."""
    async def check(base, client):
        async with client.get(f"{base}/", headers={"Host": "evil.example"}) as page:
            assert page.status == 403
        async with client.get(f"{base}/") as page:
            assert page.status == 200

    serving(fake_server(tmp_path, token=None), check)


def test_the_page_sends_the_browser_back_to_the_host_it_asked_for(tmp_path):
    async def check(base, client):
        async with client.get(f"{base}/?token={TOKEN}",
                              headers={"Host": "gpu-box.lan:8000"}) as page:
            text = await page.text()
        assert 'data-session-websocket-url="ws://gpu-box.lan:8000/ws"' in text
        assert "localhost" not in text and "127.0.0.1" not in text

    serving(fake_server(tmp_path), check)


def test_a_public_url_behind_a_proxy_fixes_the_pages_addresses_and_origin(tmp_path):
    from aiohttp import WSServerHandshakeError

    server = fake_server(tmp_path)
    server.fixed_url = "https://textgen.example"  # `--public-url https://textgen.example`

    async def check(base, client):
        async with client.get(f"{base}/?token={TOKEN}", headers={"Host": "internal:8000"}) as page:
            text = await page.text()
        assert 'data-session-websocket-url="wss://textgen.example/ws"' in text
        assert "internal" not in text
        ws = await client.ws_connect(f"{base}/ws?token={TOKEN}",
                                     headers={"Origin": "https://textgen.example"})
        assert "pid" in await first_packet(ws)
        await ws.close()
        with pytest.raises(WSServerHandshakeError):
            await client.ws_connect(f"{base}/ws?token={TOKEN}",
                                    headers={"Origin": "https://evil.example"})

    serving(server, check)


def test_terminal_sizes_are_clamped(tmp_path):
    import json

    async def check(base, client):
        ws = await client.ws_connect(f"{base}/ws?token={TOKEN}&width=10000000&height=10000000")
        hello = await first_packet(ws)
        assert (hello["columns"], hello["rows"]) == ("500", "200")
        await ws.send_json(["resize", {"width": 100000, "height": 100000}])
        echoed = await next_echo(ws)
        assert echoed[:1] == b"M"
        assert json.loads(echoed[1:]) == {"type": "resize", "width": 500, "height": 200}
        await ws.send_json(["resize", {"width": "x", "height": -5}])  # nonsense: sane values
        assert json.loads((await next_echo(ws))[1:])["width"] == 80
        await ws.send_str("not json")  # dropped; the tab carries on
        await ws.send_json(["stdin", "hi"])
        assert await next_echo(ws) == b"Dhi"
        await ws.close()

    serving(fake_server(tmp_path), check)


@pytest.mark.parametrize("stubborn", [False, True], ids=["quits", "ignores-quit-and-sigterm"])
def test_a_closed_tab_leaves_no_process_behind(tmp_path, stubborn):
    from repl.serve.tab import QUIT_GRACE_S, TERM_GRACE_S

    async def check(base, client):
        ws = await client.ws_connect(f"{base}/ws?token={TOKEN}")
        hello = await first_packet(ws)
        pids = [hello["pid"], hello["child"]]
        assert not any(_gone(pid) for pid in pids)
        await ws.close()
        return await wait_gone(pids)

    took = serving(fake_server(tmp_path, stubborn=stubborn), check)
    # Quit, then SIGTERM, then SIGKILL: bounded by the two grace periods (plus a loaded machine).
    assert took < QUIT_GRACE_S + TERM_GRACE_S + 10


def test_the_session_cap_turns_the_next_tab_away_clearly(tmp_path):
    import asyncio

    async def check(base, client):
        tabs = [await client.ws_connect(f"{base}/ws?token={TOKEN}") for _ in range(2)]
        for ws in tabs:
            await first_packet(ws)
        full = await client.ws_connect(f"{base}/ws?token={TOKEN}")
        message = await full.receive(timeout=60)
        assert b"All 2 sessions of this textgen server are in use" in message.data
        assert (await full.receive(timeout=60)).type.name in ("CLOSE", "CLOSED")
        assert full.close_code == 1013
        async with client.get(f"{base}/?token={TOKEN}") as page:
            assert page.status == 503 and "All 2 sessions" in await page.text()
        await tabs[0].close()
        # A closed tab frees its place, once its app has ended (which takes a moment).
        for _ in range(600):
            again = await client.ws_connect(f"{base}/ws?token={TOKEN}")
            first = await again.receive(timeout=60)
            if b"in use" not in first.data:
                break
            await again.close()
            await asyncio.sleep(0.1)
        assert b'"pid"' in first.data
        for ws in (again, tabs[1]):
            await ws.close()

    serving(fake_server(tmp_path, max_sessions=2), check)


def test_tabs_get_the_shared_engines_url_and_its_key_only_by_environment(tmp_path):
    import json

    engine = fake_engine(tmp_path)

    async def check(base, client):
        hellos = []
        for _ in range(2):
            ws = await client.ws_connect(f"{base}/ws?token={TOKEN}")
            hellos.append(await first_packet(ws))
            await ws.close()
        return hellos, engine.process.pid

    hellos, engine_pid = serving(fake_server(tmp_path, engine=engine), check)
    key = (tmp_path / "engine-key").read_text()
    assert len(key) >= 24 and key == engine.key
    for hello in hellos:
        argv = hello["argv"]
        assert argv[argv.index("--model") + 1] == "http://127.0.0.1:9/v1#fake model"
        assert hello["key"] == key and not any(key in part for part in argv)
        assert json.loads(hello["served"]) == {
            "model": "http://127.0.0.1:9/v1#fake model", "models_dir": None,
            "allow_training": False, "shared_engine": True}
    assert _gone(engine_pid)  # the engine stops with the server


def test_a_stopped_engine_is_said_on_the_page(tmp_path):
    import asyncio
    import signal

    engine = fake_engine(tmp_path)

    async def check(base, client):
        async with client.get(f"{base}/?token={TOKEN}") as page:
            assert page.status == 200
        engine.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(engine.process.wait(), 60)
        async with client.get(f"{base}/?token={TOKEN}") as page:
            assert page.status == 503 and "engine of this textgen server has stopped" in \
                await page.text()

    serving(fake_server(tmp_path, engine=engine), check)


def test_an_engine_that_cannot_load_the_model_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 12)
    assert main(["serve", "--port", str(free_port()), "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("textgen: error:")]
    assert len(errors) == 1 and "broken.gguf" in errors[0] and "Traceback" not in err, err


@pytest.mark.parametrize("shared", [False, True])
def test_each_tab_saves_in_a_folder_of_its_own_unless_sessions_are_shared(tmp_path, shared):
    root = tmp_path / "sessions" / "served"

    async def check(base, client):
        folders = []
        for _ in range(2):
            ws = await client.ws_connect(f"{base}/ws?token={TOKEN}")
            argv = (await first_packet(ws))["argv"]
            folders.append(argv[argv.index("--sessions-dir") + 1] if "--sessions-dir" in argv
                           else None)
            await ws.close()
        return folders

    folders = serving(fake_server(tmp_path, tab_sessions=None if shared else root), check)
    if shared:
        assert folders == [None, None]  # the app command's own --sessions-dir, for all
    else:
        assert len(set(folders)) == 2 and all(Path(f).parent == root for f in folders)


def test_serve_hands_the_tab_its_policy_and_the_session_layout(tiny_model_dir, tmp_path,
                                                                monkeypatch):
    import json

    from repl.serve.cli import _make_server

    args = parse("--model", str(tiny_model_dir), "--sessions-dir", str(tmp_path),
                 "--models-dir", str(tiny_model_dir.parent))
    from repl.serve.cli import policy_from_args

    server = _make_server(app_command(args), args, "t" * 10, policy_from_args(args), "")
    policy = json.loads(server.env["TEXTGEN_SERVED"])
    assert policy == {"model": str(tiny_model_dir.resolve()), "allow_training": False,
                      "models_dir": str(tiny_model_dir.parent.resolve()),
                      "shared_engine": False}
    assert server.engine is None  # --models-dir: each tab loads its own models
    assert server.tab_sessions == tmp_path.resolve() / "served"
    shared = parse("--sessions-dir", str(tmp_path), "--shared-sessions")
    assert _make_server(app_command(shared), shared, None, policy_from_args(shared),
                        "").tab_sessions is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0", "--token", ""], "a server on 0.0.0.0 needs a token"),
        (["--token", "short"], "at least 8 printable ASCII characters"),
        (["--max-sessions", "0"], "--max-sessions 0: at least 1"),
        (["--models-dir", "/no/such/dir"], "no such directory"),
    ],
)
def test_bad_serve_flags_are_one_clear_line(capsys, argv, message):
    assert main(["serve", "--port", str(free_port()), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textgen: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "env", "token"), [
    ([], None, "random"), (["--token", "my-own-token"], None, "my-own-token"),
    ([], "from-the-env-123", "from-the-env-123"), (["--token", ""], None, None)])
def test_the_printed_url_carries_the_token(capsys, monkeypatch, argv, env, token):
    from repl.serve.server import TextgenServer

    if env is None:
        monkeypatch.delenv("TEXTGEN_SERVE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("TEXTGEN_SERVE_TOKEN", env)
    served = []
    monkeypatch.setattr(TextgenServer, "serve", lambda self: served.append(self))
    port = free_port()
    assert main(["serve", "--port", str(port), *argv]) == 0
    banner = served[0].banner
    if token is None:
        assert served[0].token is None and f"http://127.0.0.1:{port}/ " in banner
    else:
        used = served[0].token
        assert (len(used) >= 24) if token == "random" else (used == token)
        assert f"http://127.0.0.1:{port}/?token={used} " in banner
