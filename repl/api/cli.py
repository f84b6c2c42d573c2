"""`textgen api`: serve one model over OpenAI's HTTP protocol, so any OpenAI client can use it.

Loopback by default; any other address needs an API key (--api-key or $TEXTGEN_API_KEY), since
whoever reaches the port could otherwise use the machine's engine.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from repl.errors import TextgenError
from repl.options import (
    add_model_arguments,
    add_sampling_arguments,
    backend_options,
    params_from_args,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
KEY_ENV = "TEXTGEN_API_KEY"
DEFAULT_MAX_QUEUE = 32  # a request waits about (its place x one generation's time)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "api", help="serve the model over OpenAI's HTTP API (loopback unless --host says "
                    "otherwise)",
        description="Serve one model over OpenAI's HTTP protocol: GET /v1/models, POST "
                    "/v1/completions and /v1/chat/completions, streamed or not. Any OpenAI "
                    "client (the openai package, llm, mikupad) can then use it. It binds to "
                    "127.0.0.1 (this machine only) unless --host says otherwise, and any other "
                    "address needs an API key. The sampling flags set the defaults a request "
                    "does not override.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, this machine only; "
                             "any other needs --api-key)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on, 0 for any free one (default: %(default)s)")
    parser.add_argument("--api-key", metavar="KEY",
                        help=f"the key clients must send as 'Authorization: Bearer KEY' "
                             f"(default: ${KEY_ENV}; none on loopback)")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                        help="requests that may wait for the engine; more get 429 "
                             "(default: %(default)s)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. https://lmg-anon.github.io for "
                             "mikupad, or null for a page opened from a file) call the API from "
                             "a browser; repeatable (default: none, so no web page can)")
    parser.add_argument("--log-sessions", type=Path, metavar="DIR",
                        help="save each request and its completion as a textgen session in DIR")
    add_model_arguments(parser, remote_key=False)
    add_sampling_arguments(parser)
    parser.set_defaults(func=run)


def api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else $TEXTGEN_API_KEY; refused when missing on a non-loopback --host."""
    from repl.serve import is_loopback

    key = args.api_key if args.api_key is not None else os.environ.get(KEY_ENV)
    key = key or None
    if key is None and not is_loopback(args.host):
        raise TextgenError(f"a server on {args.host} needs an API key: anyone who can reach it "
                           f"could use it. Give one with --api-key or ${KEY_ENV}.")
    if key is not None and (not key.isascii() or not key.isprintable() or " " in key):
        raise TextgenError("--api-key: use printable ASCII characters, no spaces.")
    return key


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from repl.api.app import ApiConfig, create_app
    from repl.engine import open_backend
    from repl.serve import public_url

    key = api_key(args)
    if args.max_queue < 0:
        raise TextgenError("--max-queue must be 0 or more.")
    if not 0 <= args.port <= 65535:
        raise TextgenError(f"--port must be from 0 to 65535, not {args.port}.")
    defaults = params_from_args(args)  # validated before the (slow) model load
    listener = _listen(args.host, args.port)
    backend = open_backend(args.model, **backend_options(args))
    port = listener.getsockname()[1]
    url = f"{public_url(args.host, port)}/v1"

    def ready() -> None:
        print(f"textgen api: serving {backend.info.name} at {url} "
              f"({backend.info.runs_on}{', API key required' if key else ''})", flush=True)

    config = ApiConfig(api_key=key, max_queue=args.max_queue, defaults=defaults,
                       log_sessions=args.log_sessions, allow_origins=tuple(args.allow_origin))
    app = create_app(backend, config, on_ready=ready)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[listener])
    finally:
        backend.close()
        listener.close()
    print("textgen api: stopped", file=sys.stderr)
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading the model, so a taken port fails at once, not after the load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise TextgenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    listener.listen(128)
    listener.set_inheritable(True)
    return listener
