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
    monkeypatch.chdir(tiny_model_dir.parent)
    args = parse("--model", tiny_model_dir.name, "--seed", "3", "-t", "0.5", "--stop", "END",
                 "--chat", "--sessions-dir", str(tmp_path))
    command = app_command(args)
    assert command[:4] == [sys.executable, "-m", "repl", "--tui"]
    # A relative model directory is passed on absolute, so the app finds it from anywhere.
    assert command[command.index("--model") + 1] == str(tiny_model_dir.resolve())
    for flag, value in (("--seed", "3"), ("--temperature", "0.5"), ("--stop", "END"),
                        ("--sessions-dir", str(tmp_path.resolve()))):
        assert command[command.index(flag) + 1] == value
    assert "--chat" in command and "--top-k" not in command
    # What the app process receives parses back to the same choices.
    app_args = build_parser().parse_args(command[3:])
    assert app_args.tui and app_args.seed == 3 and app_args.stop == ["END"]


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
    from textual_serve.server import Server

    served = []
    monkeypatch.setattr(Server, "serve", lambda self: served.append(self))
    assert main(["serve", "--host", host, "--port", str(free_port())]) == 0
    err = capsys.readouterr().err
    assert served and served[0].command.startswith(sys.executable)
    warning = (f"textgen: warning: listening on {host}: anyone who can reach it and has the "
               "token can use the model.")
    assert (err == warning + "\n") is warned and (err == "") is not warned


@pytest.mark.slow
def test_a_real_tab_opens_the_tui_and_its_process_ends_when_the_tab_closes(tiny_model_dir,
                                                                           tmp_path):
    """`textgen serve` as a user runs it: the printed URL (with its token) opens the page, the
    websocket runs the real TUI, and closing it ends the app's process within seconds."""
    import asyncio
    import re

    from aiohttp import ClientSession

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "repl", "serve", "--port", str(port), "--model",
         str(tiny_model_dir), "--sessions-dir", str(tmp_path / "sessions")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        banner = server.stdout.readline()  # printed once the server listens
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
                seen = b""
                while b"tiny-gpt2" not in seen:  # the status bar, once the model has loaded
                    message = await ws.receive(timeout=240)
                    assert message.type.name == "BINARY", (message, seen[-500:])
                    seen += message.data
                apps = [p for p in _children(server.pid) if "--tui" in p.cmdline()]
                assert len(apps) == 1
                await ws.close()
                return apps[0].pid

        pid = asyncio.run(tab())
        deadline = time.monotonic() + 30
        while not _gone(pid):
            assert time.monotonic() < deadline, f"tab app {pid} still runs"
            time.sleep(0.1)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out  # SIGTERM is a clean exit
    assert "Traceback" not in out


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
                 "rows": os.environ["ROWS"], "served": os.environ.get("TEXTGEN_SERVED")}).encode())
while len(head := inp.read(5)) == 5:
    payload = inp.read(int.from_bytes(head[1:], "big"))
    if head[:1] == b"M" and json.loads(payload)["type"] == "quit" and not stubborn:
        break
    send(head[:1] + payload)  # echoes what the server passed on: b"M{...}" or b"Dkeys"
'''
TOKEN = "test-token-123"


def fake_server(tmp_path, *, stubborn: bool = False, max_sessions: int = 4,
                token: str | None = TOKEN, tab_sessions: Path | None = None):
    from repl.serve.server import TextgenServer

    script = tmp_path / "fake_app.py"
    script.write_text(FAKE_APP)
    argv = [sys.executable, str(script), *(["--stubborn"] if stubborn else [])]
    return TextgenServer(argv, host="127.0.0.1", port=0, token=token, max_sessions=max_sessions,
                         env={"TEXTGEN_SERVED": '{"model": "m"}'}, tab_sessions=tab_sessions)


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

    return asyncio.run(asyncio.wait_for(main(), 120))


async def first_packet(ws) -> dict:
    import json

    message = await ws.receive(timeout=60)
    return json.loads(message.data)


async def next_echo(ws) -> bytes:
    return (await ws.receive(timeout=60)).data


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
                      "models_dir": str(tiny_model_dir.parent.resolve())}
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
