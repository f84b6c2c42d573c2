"""`textgen serve`: the app command it runs per tab, loopback by default, clear errors, the page."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import types
import urllib.request

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
    warning = f"textgen: warning: listening on {host}: anyone who can reach it can use the model."
    assert (err == warning + "\n") is warned and (err == "") is not warned


@pytest.mark.slow
def test_serves_the_page_that_opens_the_app_websocket(tiny_model_dir):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "repl", "serve", "--port", str(port), "--model",
         str(tiny_model_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        page = _get(f"http://127.0.0.1:{port}/", deadline=time.monotonic() + 20)
        assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page
        assert "textgen" in page
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=10)
    assert server.returncode == 0, out  # SIGTERM is a clean exit
    assert f"http://127.0.0.1:{port}" in out and "warning" not in out


def _get(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

