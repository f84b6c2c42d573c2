// Drive a textual-serve page in headless Chromium: wait for the app, type into the terminal,
// wait for expected text in what the server streams back, and save a screenshot.
//
// usage: node drive.mjs '{"url": ..., "ready": [...], "click": {"x": 0.5, "y": 0.9},
//                         "keys": [...], "expect": [...], "screenshot": "out.png",
//                         "stepTimeoutMs": 600000, "chromium": "/usr/bin/chromium"}'
// `keys` items are {"type": "text"} or {"press": "Enter"}; `ready` and `expect` are strings that
// must all appear in the terminal output (escape sequences stripped) before and after the keys.
// Prints one JSON line: {"ok": bool, "error"?: str, "seen": str (the tail of the text), ...}.
//
// Each step (the page, the app ready, the answer) waits on events for up to stepTimeoutMs, a
// limit meant never to be reached by a correct program however loaded the machine (the model
// loads while the app starts); a step fails at once when the websocket closes.
//
// xterm.js draws on a canvas, so the page's DOM has no text to read: the test reads what the
// server sends over the websocket instead, which is exactly what the terminal draws.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const spec = JSON.parse(process.argv[2]);
const timeoutMs = spec.stepTimeoutMs ?? 600000;
const started = Date.now();
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];

// CSI and OSC escape sequences, and the charset switches Textual emits.
const ESCAPES = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]/g;

let text = "";
let closed = null; // why the app's websocket closed, once it has
let changed = () => {}; // wakes the waiting step when text arrives or the socket closes
const seen = () => text.replace(ESCAPES, "");

async function waitFor(needles, what) {
  const since = Date.now();
  for (;;) {
    const screen = seen();
    const missing = needles.filter((needle) => !screen.includes(needle));
    if (missing.length === 0) return;
    if (closed) throw new Error(`${what}: the websocket closed (${closed}) before ${JSON.stringify(missing)} appeared`);
    const waited = Date.now() - since;
    if (waited > timeoutMs) {
      throw new Error(`${what}: waited ${waited} ms for ${JSON.stringify(missing)} on the terminal`);
    }
    await new Promise((resolve) => {
      changed = resolve;
      setTimeout(resolve, 1000);
    });
  }
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "textgen-chromium-"));
const result = { ok: false };
let context;
try {
  // A persistent context is how Playwright takes an explicit (here: fresh) --user-data-dir.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: spec.chromium ?? "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
    timeout: timeoutMs,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("websocket", (socket) => {
    socket.on("framereceived", ({ payload }) => {
      text += typeof payload === "string" ? "" : payload.toString("utf8");
      changed();
    });
    socket.on("close", () => {
      closed = "closed by the server";
      changed();
    });
    socket.on("socketerror", (error) => {
      closed = String(error);
      changed();
    });
  });
  // The page asks Google Fonts for its font; offline that request just fails, so don't wait
  // for the load event.
  await page.goto(spec.url, { waitUntil: "domcontentloaded", timeout: timeoutMs });
  await page.waitForSelector("body.-first-byte", { timeout: timeoutMs });
  await waitFor(spec.ready ?? [], "app not ready (loading the model)");
  result.readyMs = Date.now() - started;
  // Keys reach the app through xterm's hidden textarea. A click lands in the app as a mouse
  // event too (and moves its focus), so it goes where the spec says: a fraction of the page.
  if (spec.click) {
    const box = await page.locator("#terminal").boundingBox();
    await page.mouse.click(box.x + box.width * spec.click.x, box.y + box.height * spec.click.y);
  }
  await page.focus(".xterm-helper-textarea");
  const before = text.length;
  for (const key of spec.keys ?? []) {
    if (key.type !== undefined) await page.keyboard.type(key.type, { delay: 20 });
    if (key.press !== undefined) await page.keyboard.press(key.press);
  }
  await waitFor(spec.expect ?? [], "no streamed answer");
  result.answerMs = Date.now() - started;
  result.bytesAfterKeys = text.length - before;
  if (spec.settleMs) await page.waitForTimeout(spec.settleMs);
  if (spec.screenshot) await page.screenshot({ path: spec.screenshot });
  result.ok = true;
} catch (error) {
  result.error = String(error.message ?? error).split("\n")[0];
  if (context && spec.screenshot) {
    const page = context.pages()[0];
    await page?.screenshot({ path: spec.screenshot }).catch(() => {});
  }
} finally {
  await context?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
result.seen = seen().slice(-4000);
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
