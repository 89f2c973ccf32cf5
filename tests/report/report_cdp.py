"""A small Chrome DevTools Protocol driver over aiohttp, enough to load a page and watch what it does.

Starts headless Chromium with a fresh profile and no network services, turns the page's network off,
records console errors, uncaught exceptions, JavaScript dialogs (alert/confirm/prompt) and any request
that is not file:// or data:, and takes a full-page screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                  "--disable-extensions", "--mute-audio", "--remote-debugging-port=0")

DIALOG_HOOK = """
window.__kvb_alerted = false;
["alert", "confirm", "prompt", "print"].forEach(function (name) {
  var original = window[name];
  window[name] = function () { window.__kvb_alerted = true; return original.apply(window, arguments); };
});
"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    network_requests: list[str] = field(default_factory=list)
    evaluations: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, report: PageReport):
        self.ws = ws
        self.report = report
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.load_fired = asyncio.Event()

    async def pump(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                await self._event(data["method"], data.get("params", {}))

    async def _event(self, method: str, params: dict[str, Any]) -> None:
        r = self.report
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            r.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            r.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            r.console_errors.append(params["entry"].get("text", ""))
        elif method == "Page.javascriptDialogOpening":
            r.dialogs.append(f"{params.get('type')}: {params.get('message')}")
            asyncio.ensure_future(self.send("Page.handleJavaScriptDialog", accept=False))
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                r.network_requests.append(url)
        elif method == "Page.loadEventFired":
            self.load_fired.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with status {proc.returncode}")
        if marker.exists():
            lines = marker.read_text().splitlines()
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


async def _drive(port: int, url: str, wait_js: str, evaluations: dict[str, str], width: int,
                 timeout: float) -> PageReport:
    report = PageReport()
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json(content_type=None)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws, report)
            pump = asyncio.ensure_future(session.pump())
            try:
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await session.send(f"{domain}.enable")
                await session.send("Network.emulateNetworkConditions", offline=True, latency=0,
                                   downloadThroughput=-1, uploadThroughput=-1)
                await session.send("Emulation.setDeviceMetricsOverride", width=width, height=900,
                                   deviceScaleFactor=1, mobile=False)
                # Belt and braces next to Page.javascriptDialogOpening: flag any call to a dialog function.
                await session.send("Page.addScriptToEvaluateOnNewDocument", source=DIALOG_HOOK)
                await session.send("Page.navigate", url=url)
                await asyncio.wait_for(session.load_fired.wait(), timeout)
                deadline = time.monotonic() + timeout
                while not await session.evaluate(wait_js):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)  # let late console errors and dialogs arrive
                report.evaluations = {k: await session.evaluate(js) for k, js in evaluations.items()}
                height = int(await session.evaluate("document.documentElement.scrollHeight") or 900)
                shot = await session.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                          clip={"x": 0, "y": 0, "width": width, "height": min(height, 16000),
                                                "scale": 1})
                report.screenshot = base64.b64decode(shot["data"])
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
    return report


def load_page(chromium: str, path: Path, *, wait_js: str = "true", evaluations: dict[str, str] | None = None,
              width: int = 1400, timeout: float = 60.0) -> PageReport:
    """Open ``path`` from file:// in a fresh headless Chromium and report what happened."""
    # Chromium's helper processes (renderer, crashpad, zygote) outlive its main process for a moment and keep
    # writing into the profile, so the whole process group is stopped and the profile removed only after it
    # (a plain TemporaryDirectory failed now and then with "Directory not empty: 'Default'").
    with tempfile.TemporaryDirectory(prefix="kvb-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp)
        proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "HOME": str(profile)}, start_new_session=True)
        try:
            port = _devtools_port(profile, proc, timeout)
            return asyncio.run(_drive(port, path.resolve().as_uri(), wait_js, evaluations or {}, width, timeout))
        finally:
            _stop_group(proc)
            _remove_tree(profile)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to Chromium's process group, SIGKILL if it has not gone in 10 s; returns once the main process
    has exited and no process of the group is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue
        for _ in range(100):  # helpers of the group exit right after the main process
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _remove_tree(path: Path) -> None:
    """Remove the profile; a helper process that was still flushing a file makes one attempt fail."""
    for _ in range(20):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    shutil.rmtree(path, ignore_errors=True)
