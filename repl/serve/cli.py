"""`textgen serve`: the same TUI in a web browser, through textual-serve.

Each browser tab gets its own `textgen --tui ...` process (its own session and history);
textual-serve relays the terminal between that process and xterm.js in the page. By default the
tabs share one engine, a `textgen api` child on a loopback port (repl/serve/engine.py), and each
tab's app is a light client of it; `--engine-per-tab` (implied by --models-dir) gives every tab
its own model instead. The server binds to loopback unless told otherwise, needs the token it
prints (as Jupyter does), and runs at most --max-sessions tabs; a tab's app is restricted
(repl/serve/policy.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path

from repl.errors import TextgenError
from repl.options import add_model_arguments, add_sampling_arguments, params_from_args
from repl.serve.policy import ENV_VAR, ServedPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_SESSIONS = 4  # a shared engine generates for one tab at a time
TOKEN_ENV = "TEXTGEN_SERVE_TOKEN"
# Flags handed on unchanged, when the user gave them: the engine's to whoever loads the model
# (the shared engine, or each tab's app), the sampling ones to each tab's app (which sends them
# with every request, so the engine needs no defaults of its own).
_ENGINE_FLAGS = ("device", "dtype", "backend", "threads")
_SAMPLING_FLAGS = ("preset", "max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                   "repetition_penalty", "no_repeat_ngram_size", "seed")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the TUI to web browsers (loopback only unless --host says otherwise)",
        description="Serve the textgen TUI to web browsers through textual-serve: open the "
                    "printed URL (it carries the server's token), and every tab gets its own "
                    "app with its own session; the tabs share one engine (one copy of the "
                    "model) unless --engine-per-tab. It binds to 127.0.0.1 (this machine "
                    "only) unless --host says otherwise. A tab cannot train, loads only the "
                    "served model (and those under --models-dir), and sees only the sessions "
                    "it created.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, reachable only from "
                             "this machine; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on (default: %(default)s)")
    parser.add_argument("--public-url", metavar="URL",
                        help="the address browsers use to reach the server, when it is not the "
                             "one they asked for (behind a proxy that rewrites Host)")
    parser.add_argument("--token",
                        help=f"the token browsers must bring (default: ${TOKEN_ENV}, else a new "
                             "random one, printed in the URL); '' turns it off, on a loopback "
                             "--host only")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS, metavar="N",
                        help="tabs open at once (default: %(default)s)")
    parser.add_argument("--engine-per-tab", action="store_true",
                        help="every tab's app loads its own copy of the model (0.65-1 GB a tab "
                             "for the default model, against ~70 MB on the shared engine), and "
                             "may switch models (see --models-dir)")
    parser.add_argument("--models-dir", type=Path, metavar="DIR",
                        help="tabs may also load (switch to, compare) models under DIR; implies "
                             "--engine-per-tab, since the shared engine runs one model")
    parser.add_argument("--allow-training", action="store_true",
                        help="let tabs run the trainer (F5), which writes files on this machine")
    parser.add_argument("--shared-sessions", action="store_true",
                        help="every tab sees every session in --sessions-dir (default: each tab "
                             "saves in its own folder, DIR/served/TAB, and sees only those)")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--chat", action="store_true", help="start each app in chat mode")
    parser.add_argument("--sessions-dir", type=Path, metavar="DIR",
                        help="where the apps save their sessions (default: $TEXTGEN_SESSIONS_DIR "
                             "or sessions/)")
    parser.set_defaults(func=run)


def shares_engine(args: argparse.Namespace) -> bool:
    """Whether the tabs share one engine: unless asked not to, or allowed to load models of
    their own, or the model is a server already."""
    from repl.engine.remote import is_url_spec

    return not (args.engine_per_tab or args.models_dir is not None or is_url_spec(args.model))


def app_command(args: argparse.Namespace) -> list[str]:
    """The command line of one app process: textgen itself, forced into the TUI. With a shared
    engine the server adds the engine's URL as its --model once the engine runs."""
    command = [sys.executable, "-m", "repl", "--tui"]
    if not shares_engine(args):
        command += ["--model", served_model(args.model), *_flags(args, _ENGINE_FLAGS)]
    command += _flags(args, _SAMPLING_FLAGS)
    for text in getattr(args, "stop", None) or ():
        command += ["--stop", text]
    if args.chat:
        command.append("--chat")
    command += ["--sessions-dir", str(sessions_root(args))]
    return command


def _flags(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    flags: list[str] = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def shared_engine(args: argparse.Namespace, policy: ServedPolicy, max_sessions: int):
    """The `textgen api` child the tabs share (started with the server), or None."""
    if not shares_engine(args):
        return None
    from repl.api.cli import DEFAULT_MAX_QUEUE
    from repl.serve.engine import SharedEngine, engine_command

    # Each tab waits for at most one generation at a time (two while it compares).
    argv = engine_command(served_model(args.model), _flags(args, _ENGINE_FLAGS),
                          max_queue=max(DEFAULT_MAX_QUEUE, 2 * max_sessions))
    return SharedEngine(argv, policy)


def sessions_root(args: argparse.Namespace) -> Path:
    from repl.session import default_sessions_dir

    return (args.sessions_dir or default_sessions_dir()).expanduser().resolve()


def served_model(spec: str) -> str:
    """The spec as each tab gets it: checked once here, and a local path made absolute so the
    app finds it whatever its working directory."""
    from repl.models import resolve_spec

    kind, where = resolve_spec(spec)
    return str(Path(where).resolve()) if kind in ("dir", "gguf") else spec


def policy_from_args(args: argparse.Namespace) -> ServedPolicy:
    models_dir = None
    if args.models_dir is not None:
        folder = args.models_dir.expanduser()
        if not folder.is_dir():
            raise TextgenError(f"--models-dir {args.models_dir}: no such directory.")
        models_dir = str(folder.resolve())
    return ServedPolicy(model=served_model(args.model), models_dir=models_dir,
                        allow_training=args.allow_training)


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


def pick_token(args: argparse.Namespace) -> str | None:
    """--token, else $TEXTGEN_SERVE_TOKEN, else a fresh random one; None when turned off."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if token is None:
        return secrets.token_urlsafe(24)
    if token == "":
        if not is_loopback(args.host):
            raise TextgenError(f"a server on {args.host} needs a token: anyone who can reach it "
                               "could use it. Drop --token '' (a random one is made).")
        return None
    if not token.isascii() or not token.isprintable() or " " in token or len(token) < 8:
        raise TextgenError("--token: use at least 8 printable ASCII characters, no spaces.")
    return token


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise TextgenError(f"port {args.port} is out of range; use 1 to 65535.")
    if args.max_sessions < 1:
        raise TextgenError(f"--max-sessions {args.max_sessions}: at least 1.")
    params_from_args(args)  # bad sampling flags fail now, not in every browser tab
    argv = app_command(args)
    policy = policy_from_args(args)
    token = pick_token(args)
    _check_port_free(args.host, args.port)
    url = (args.public_url or public_url(args.host, args.port)).rstrip("/") + "/"
    if token:
        url += f"?token={token}"
    if not is_loopback(args.host):
        print(f"textgen: warning: listening on {args.host}: anyone who can reach it and has "
              "the token can use the model.", file=sys.stderr)
    engines = "one shared engine" if shares_engine(args) else "an engine per tab"
    banner = (f"textgen: serving the TUI with model {args.model} on {url} (at most "
              f"{args.max_sessions} tabs, one app each, {engines}); Ctrl+C stops.")
    server = _make_server(argv, args, token, policy, banner)
    try:
        server.serve()
    finally:
        if server.engine is not None:  # however the server ended, the engine goes with it
            server.engine.kill()
    return 0


def _make_server(argv: list[str], args: argparse.Namespace, token: str | None,
                 policy: ServedPolicy, banner: str):
    """The web server (aiohttp and textual-serve are imported only when serving)."""
    from repl.serve.server import TextgenServer

    tab_sessions = None if args.shared_sessions else sessions_root(args) / "served"
    env = {ENV_VAR: policy.to_env()}
    if getattr(args, "remote_api_key", None):  # a URL model's key, by env: `ps` shows argv
        from repl.engine.remote import KEY_ENV

        env[KEY_ENV] = args.remote_api_key
    return TextgenServer(argv, host=args.host, port=args.port, token=token,
                         max_sessions=args.max_sessions, env=env,
                         public_url=args.public_url, banner=banner, tab_sessions=tab_sessions,
                         engine=shared_engine(args, policy, args.max_sessions))


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
