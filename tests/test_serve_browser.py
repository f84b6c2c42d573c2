"""End to end: `textgen serve` with the default model, driven by headless Chromium.

The browser opens the URL the server prints (with its token), types a prompt into the TUI,
submits it and waits until the greedy continuation (computed here with the same model and
parameters) arrives on the terminal, then takes a screenshot. Tools: Debian's chromium and
playwright-core from tests/browser (`make browser`, run by `make test`, installs them); without
them the test skips.

Every wait here is for an event (the server's banner, text on the terminal) with limits of
minutes, not seconds: on a machine loaded by other test runs the model alone took over 50 s to
load, and a correct program must not fail for that.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "The history of climate change research began"
NEW_TOKENS = 8
STEP_LIMIT_S = 600  # each wait: the server's start, the app ready, the answer (see above)


def _missing_tools() -> str | None:
    if not Path(CHROMIUM).is_file():
        return "Chromium is not installed (`make browser` installs it as root on Debian)"
    if shutil.which("node") is None:
        return "node is not installed (`make browser` installs it as root on Debian)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed in tests/browser (`make browser` installs it)"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(4 * STEP_LIMIT_S),
    pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools())),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerOutput:
    """The server's output, read as it comes (so its pipe never fills), and its printed URL."""

    def __init__(self, server: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._urls: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(server,), daemon=True)
        self._reader.start()

    def _read(self, server: subprocess.Popen) -> None:
        for line in server.stdout:
            self.lines.append(line)
            if found := re.search(r"(http://\S+/\?token=\S+)", line):
                self._urls.put(found.group(1))
        self._urls.put(None)  # the server exited

    def url(self) -> str:
        """The URL from the banner, printed once the server listens."""
        try:
            url = self._urls.get(timeout=STEP_LIMIT_S)
        except queue.Empty:
            pytest.fail(f"textgen serve printed no URL in {STEP_LIMIT_S} s: {self.text()}")
        if url is None:
            pytest.fail(f"textgen serve exited before listening: {self.text()}")
        return url

    def text(self) -> str:
        return "".join(self.lines)

    def all_text(self) -> str:
        """Everything it printed, once it has exited (its pipe then closes)."""
        self._reader.join(timeout=STEP_LIMIT_S)
        return self.text()


def _expected_words(default_loaded) -> tuple[list[str], str]:
    """A few words of the greedy continuation that the prompt itself does not contain."""
    from repl.engine import GenerationRequest, GenerationStats, Generator
    from repl.params import preset

    params = preset("greedy").replace(max_new_tokens=NEW_TOKENS)
    text, finish = "", ""
    for item in Generator(default_loaded).stream(GenerationRequest(PROMPT, params)):
        if isinstance(item, GenerationStats):
            finish = item.finish_reason
        elif isinstance(item, str):
            text += item
    words = [w for w in re.findall(r"[A-Za-z]{4,}", text) if w not in PROMPT]
    assert words, f"the greedy continuation has no words to look for: {text!r}"
    return words[:4], finish


def test_prompt_in_chromium_streams_the_continuation(default_loaded, tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        # The shared engine on transformers and the CPU like `default_loaded`, so the greedy
        # text is the one computed below (llama.cpp's Q4_1 kernels may break a near-tie
        # another way).
        [sys.executable, "-m", "repl", "serve", "--port", str(port), "--model", "default",
         "--device", "cpu", "--backend", "transformers", "--preset", "greedy",
         "--max-new-tokens", str(NEW_TOKENS),
         "--sessions-dir", str(tmp_path / "sessions")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = ServerOutput(server)
    screenshot = tmp_path / "textgen-serve.png"
    try:
        words, finish = _expected_words(default_loaded)  # while the server starts
        url = output.url()
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        spec = {
            "url": url,
            "chromium": CHROMIUM,
            # The status bar names what runs the model once it is ready: the shared engine.
            "ready": ["SmolLM2-135M-Instruct", "remote 127.0.0.1:"],
            # Click into the prompt box (bottom left of the page), type, submit.
            "click": {"x": 0.3, "y": 0.91},
            "keys": [{"type": PROMPT}, {"press": "Enter"}],
            # "generating" is the status bar while text streams in; the words arrive after.
            "expect": ["generating", *words, f"last: {finish}"],
            "screenshot": str(screenshot),
            "stepTimeoutMs": STEP_LIMIT_S * 1000,
            "settleMs": 300,
        }
        driver = subprocess.run(
            ["node", str(BROWSER_DIR / "drive.mjs"), json.dumps(spec)],
            capture_output=True, text=True, timeout=3 * STEP_LIMIT_S, cwd=BROWSER_DIR,
        )
    finally:
        server.terminate()
        server.wait(timeout=STEP_LIMIT_S)
    server_log = output.all_text()
    lines = driver.stdout.strip().splitlines()
    assert lines, f"no result from the browser driver: {driver.stderr}\nserver: {server_log}"
    result = json.loads(lines[-1])
    assert result["ok"], f"{result.get('error')}\nscreen: {result['seen'][-1500:]}\n{server_log}"
    # pytest keeps only its last few temporary folders: the last screenshot also stays here.
    kept = Path(tempfile.gettempdir()) / "textgen-serve-browser.png"
    shutil.copyfile(screenshot, kept)
    print(f"browser screenshot: {kept} (ready after {result['readyMs']} ms, answer "
          f"after {result['answerMs']} ms)")
    _assert_real_picture(screenshot)
    assert "Application failed to start" not in server_log


def _assert_real_picture(path: Path) -> None:
    """A 1280x800 PNG with the many colours of a drawn TUI, not a blank page."""
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.shape[:2] == (800, 1280)
    colours = {tuple(p) for p in pixels[::4, ::4].reshape(-1, pixels.shape[2]).tolist()}
    assert len(colours) > 20
