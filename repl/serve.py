"""`textgen serve`: the same TUI in a web browser, through textual-serve.

Each browser tab gets its own `textgen --tui ...` process (its own model, session and history);
textual-serve relays the terminal between that process and xterm.js in the page. The server
binds to loopback unless told otherwise: whoever can open the page can use the model.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import socket
import sys
from pathlib import Path

from repl.errors import TextgenError
from repl.options import add_model_arguments, add_sampling_arguments, params_from_args

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Flags handed on to each app process unchanged, when the user gave them.
_VALUE_FLAGS = ("device", "dtype", "preset", "max_new_tokens", "temperature", "top_k", "top_p",
                "min_p", "repetition_penalty", "no_repeat_ngram_size", "seed")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the TUI to web browsers (loopback only unless --host says otherwise)",
        description="Serve the textgen TUI to web browsers through textual-serve: open the "
                    "printed URL, and every tab gets its own app with its own session. It binds "
                    "to 127.0.0.1 (this machine only) unless --host says otherwise; anyone who "
                    "can reach a non-loopback address can use the model.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, reachable only from "
                             "this machine; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--public-url", metavar="URL",
                        help="the address browsers use to reach the server, when it is not "
                             "http://HOST:PORT (behind a proxy, or with --host 0.0.0.0)")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--chat", action="store_true", help="start each app in chat mode")
    parser.add_argument("--sessions-dir", type=Path, metavar="DIR",
                        help="where the apps save their sessions (default: $TEXTGEN_SESSIONS_DIR "
                             "or sessions/)")
    parser.set_defaults(func=run)


def app_command(args: argparse.Namespace) -> list[str]:
    """The command line of one app process: textgen itself, forced into the TUI."""
    from repl.models import resolve_spec

    kind, where = resolve_spec(args.model)  # a bad spec fails here, once, not in every tab
    # Local paths are made absolute so the app finds them whatever its working directory.
    model = str(Path(where).resolve()) if kind in ("dir", "gguf") else args.model
    command = [sys.executable, "-m", "repl", "--tui", "--model", model]
    for name in _VALUE_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    for text in getattr(args, "stop", None) or ():
        command += ["--stop", text]
    if args.chat:
        command.append("--chat")
    if args.sessions_dir is not None:
        command += ["--sessions-dir", str(args.sessions_dir.expanduser().resolve())]
    return command


def is_loopback(host: str) -> bool:
    """True when only this machine can connect to `host` (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_url(host: str, port: int) -> str:
    """What a browser types: a wildcard bind is reached through this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise TextgenError(f"port {args.port} is out of range; use 1 to 65535.")
    params_from_args(args)  # bad sampling flags fail now, not in every browser tab
    command = shlex.join(app_command(args))
    url = args.public_url or public_url(args.host, args.port)
    _check_port_free(args.host, args.port)
    if not is_loopback(args.host):
        print(f"textgen: warning: listening on {args.host}: anyone who can reach it can use "
              "the model.", file=sys.stderr)
    _make_server(command, args.host, args.port, url, args.model).serve()
    return 0


def _make_server(command: str, host: str, port: int, url: str, model: str):
    """textual-serve's server (imported only when serving), announcing itself in one line."""
    from textual_serve.server import Server

    class TextgenServer(Server):
        async def on_startup(self, app) -> None:
            print(f"textgen: serving the TUI with model {model} on {url} (one app per browser "
                  "tab); Ctrl+C stops.", flush=True)

    return TextgenServer(command, host=host, port=port, title="textgen", public_url=url)


def _check_port_free(host: str, port: int) -> None:
    """One clear line instead of aiohttp's traceback when the port is taken or the host wrong."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TextgenError(f"cannot listen on {host!r}: {exc.strerror}.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise TextgenError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                               "--port.") from None
