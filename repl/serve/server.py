"""The web server of `textgen serve`: textual-serve's Server, locked to its owner.

What it adds to textual-serve (whose server trusts every page that can reach it):
- a per-server token, from the printed URL (`/?token=...`) or the cookie the page then gets;
  every route but the static files needs it;
- the websocket's `Origin` must be the page's own (no other site's page can drive a tab), and
  without a token the `Host` must be a loopback name (no DNS-rebinding);
- each tab saves its sessions in a folder of its own (unless --shared-sessions);
- at most `max_sessions` tabs at once; the next one gets a clear page or terminal line;
- terminal sizes clamped, and each tab's app ended within seconds of its websocket closing
  (repl/serve/tab.py);
- the websocket URL in the page is derived from the request's Host header (so a browser on
  another machine is not sent to `ws://localhost`), unless --public-url fixes it;
- the shared engine (repl/serve/engine.py), when there is one: started before the server
  listens, its URL and key handed to every tab's app, stopped after the tabs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import WSMsgType, web
from textual_serve.server import Server

from repl.serve.engine import SharedEngine
from repl.serve.tab import TabProcess

log = logging.getLogger("textgen.serve")

MAX_MESSAGE_BYTES = 1 << 20  # one websocket message from the browser (keys, a paste)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class TextgenServer(Server):
    """Serve `argv` (one process per tab) on host:port to whoever has the token."""

    def __init__(self, argv: list[str], *, host: str, port: int, token: str | None,
                 max_sessions: int, env: dict[str, str], public_url: str | None = None,
                 banner: str = "", tab_sessions: Path | None = None,
                 engine: SharedEngine | None = None) -> None:
        import shlex

        super().__init__(shlex.join(argv), host=host, port=port, title="textgen",
                         public_url=public_url)
        self.argv = argv
        self.token = token or None
        self.max_sessions = max_sessions
        self.env = env
        self.fixed_url = public_url  # None: derive each page's URLs from its request
        self.banner = banner
        self.cookie = f"textgen-serve-token-{port}"  # cookies do not tell ports apart
        self.tabs: set[TabProcess] = set()
        # Each tab saves in a folder of its own under here, so its session picker (F6) shows
        # only what it created; None: all tabs share the app command's --sessions-dir.
        self.tab_sessions = tab_sessions
        # The one engine every tab's app uses (started with the server), or None: each tab's
        # app loads its own model (--engine-per-tab, or a URL model that is remote anyway).
        self.engine = engine

    def initialize_logging(self) -> None:
        """Warnings only, plainly: textual-serve's rich handler prints locals with tracebacks."""
        logging.basicConfig(level=logging.WARNING, format="textgen serve: %(message)s")

    def serve(self, debug: bool = False) -> None:
        """textual-serve's, but the banner (the URL) is printed once the port listens, so
        whoever reads it can connect at once."""
        self.debug = debug
        self.initialize_logging()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, self.request_exit)
            loop.add_signal_handler(signal.SIGTERM, self.request_exit)
        web.run_app(self._make_app(), host=self.host, port=self.port, handle_signals=False,
                    loop=loop, print=lambda *_: print(self.banner, flush=True))

    async def on_startup(self, app: web.Application) -> None:
        if self.engine is not None:
            print("textgen: loading the model for the shared engine...", file=sys.stderr,
                  flush=True)
            await self.engine.start()

    async def _stop_engine(self, app: web.Application) -> None:
        if self.engine is not None:
            await self.engine.stop()

    async def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
        app.add_routes([
            web.get("/", self.handle_index, name="index"),
            web.get("/ws", self.handle_websocket, name="websocket"),
            web.get("/download/{key}", self.handle_download, name="download"),
            web.static("/static", self.statics_path, name="static"),
        ])
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self._stop_tabs)
        app.on_cleanup.append(self._stop_engine)  # after the tabs, which use it
        return app

    # --- who may connect ----------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            return await handler(request)
        if refusal := self.refusal(request):
            return _page(403, "Not allowed", refusal)
        response = await handler(request)
        if self.token and request.query.get("token") and not response.prepared:
            # The token came in the URL: the page's websocket and reloads send it as a cookie.
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict")
        return response

    def refusal(self, request: web.Request) -> str | None:
        """Why this request may not use the server, or None."""
        if self.token is None:
            if _host_name(request.host) not in LOOPBACK_NAMES:
                return "Without a token this server answers only to localhost addresses."
        else:
            given = request.query.get("token") or request.cookies.get(self.cookie) or ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return ("This textgen server needs its token: open the URL that "
                        "`textgen serve` printed (…/?token=…).")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._own_origins(request):
            return f"Pages from {origin} may not use this server."
        return None

    def _own_origins(self, request: web.Request) -> set[str]:
        origins = {f"{request.scheme}://{request.host}"}
        if self.fixed_url:
            parts = urlsplit(self.fixed_url)
            origins.add(f"{parts.scheme}://{parts.netloc}")
        return origins

    # --- the page -----------------------------------------------------------------------------

    def _base_url(self, request: web.Request) -> str:
        return (self.fixed_url or f"{request.scheme}://{request.host}").rstrip("/")

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        if len(self.tabs) >= self.max_sessions:
            return _page(503, "All sessions in use", self._full_message())
        if self.engine is not None and not self.engine.running:
            return _page(503, "The engine stopped", "The model engine of this textgen server "
                         "has stopped; its owner must restart `textgen serve`.")
        base = self._base_url(request)
        scheme, rest = base.split(":", 1)
        context = {
            "font_size": max(6, min(_to_int(request.query.get("fontsize"), 16), 64)),
            "app_websocket_url": ("wss:" if scheme == "https" else "ws:") + rest + "/ws",
            "config": {"static": {"url": f"{base}/static/"}},
            "application": {"name": self.title},
        }
        return aiohttp_jinja2.render_template("app_index.html", request, context)

    def _full_message(self) -> str:
        return (f"All {self.max_sessions} sessions of this textgen server are in use. Close "
                "another tab, or try again later (the owner can raise --max-sessions).")

    # --- one tab ------------------------------------------------------------------------------

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        websocket = web.WebSocketResponse(heartbeat=15, max_msg_size=MAX_MESSAGE_BYTES)
        await websocket.prepare(request)
        if len(self.tabs) >= self.max_sessions:
            await websocket.send_bytes(f"\r\ntextgen: {self._full_message()}\r\n".encode())
            await websocket.close(code=1013, message=b"all sessions in use")
            return websocket
        tab = TabProcess(self._tab_argv(), self._tab_env(), write_bytes=websocket.send_bytes,
                         write_str=websocket.send_str, close=websocket.close,
                         download_manager=self.download_manager)
        self.tabs.add(tab)  # before any await: the cap holds however many connect at once
        try:
            await tab.start(request.query.get("width"), request.query.get("height"))
            await self._relay(websocket, tab)
        except asyncio.CancelledError:
            await websocket.close()
        except Exception:
            log.exception("tab failed")
        finally:
            # The tab keeps its place until its app is gone, even if this handler is cancelled
            # (at shutdown), so the cap counts it and the shutdown waits for it.
            stopping = tab.stop_soon()
            stopping.add_done_callback(lambda _: self.tabs.discard(tab))
            await asyncio.shield(stopping)
        return websocket

    def _tab_argv(self) -> list[str]:
        argv = list(self.argv)
        if self.engine is not None:
            argv += ["--model", self.engine.spec or ""]  # the last --model wins
        if self.tab_sessions is not None:
            name = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
            argv += ["--sessions-dir", str(self.tab_sessions / name)]  # the last wins
        return argv

    def _tab_env(self) -> dict[str, str]:
        return {**self.env, **(self.engine.tab_env() if self.engine is not None else {})}

    async def _relay(self, websocket: web.WebSocketResponse, tab: TabProcess) -> None:
        """Browser -> app, until the websocket closes. Malformed messages are dropped."""
        async for message in websocket:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                kind, data = json.loads(message.data)
            except (ValueError, TypeError):
                continue
            if kind == "stdin" and isinstance(data, str):
                posted = tab.post_keys(data)
            elif kind == "resize" and isinstance(data, dict):
                posted = tab.post_resize(data.get("width"), data.get("height"))
            elif kind == "ping":
                await websocket.send_json(["pong", data])
                continue
            elif kind in ("blur", "focus"):
                posted = tab.post_meta({"type": kind})
            else:
                continue
            if not posted:
                log.warning("tab app %s stopped reading its input; closing the tab",
                            tab.process.pid if tab.process else "?")
                return

    async def _stop_tabs(self, app: web.Application) -> None:
        await asyncio.gather(*(tab.stop() for tab in list(self.tabs)), return_exceptions=True)


def _host_name(host: str) -> str:
    """The name part of a Host header: `[::1]:8000` -> `[::1]`, `localhost:8000` -> `localhost`."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _to_int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _page(status: int, title: str, message: str) -> web.Response:
    body = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>textgen: {title}</title>"
            "</head><body style='font-family: monospace; margin: 3em'>"
            f"<h1>textgen: {html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>")
    return web.Response(status=status, text=body, content_type="text/html")
