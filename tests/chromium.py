"""Test support: Debian's headless ``chromium`` driven over the DevTools protocol (CDP).

The browser runs with ``--remote-debugging-pipe``: it reads NUL-terminated JSON commands
on fd 3 and writes replies and events on fd 4, so no port is opened and no extra client
library is needed. :class:`Browser` owns the process and the pipes (a fresh
``--user-data-dir``, killed by pid on close); :class:`Page` is one tab attached in
flattened session mode, with what the web view tests need: navigation, evaluating
JavaScript, waiting for a condition, real mouse clicks and typing (``Input.*`` events at
an element's position), viewport emulation, screenshots and downloads.

Every wait is bounded; a browser that dies fails the pending command at once.
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
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)
COMMAND_TIMEOUT = 30.0


class BrowserError(Exception):
    """A CDP command failed, or the browser went away."""


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], rfd: int, wfd: int, profile: Path) -> None:
        self.proc = proc
        self._wfd = wfd
        self._rfd = rfd
        self._profile = profile
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, workdir: Path, *extra: str) -> AsyncIterator[Browser]:
        """Start chromium with a fresh profile under ``workdir`` (and ``extra`` flags);
        kill it on exit."""
        if not os.access(CHROMIUM, os.X_OK):
            raise BrowserError(f"{CHROMIUM} missing (tools/setup-deps.sh installs chromium)")
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def child_fds() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        log = open(workdir / "chromium.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, *extra, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_fds,
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        browser = cls(proc, from_browser_r, to_browser_w, profile)
        try:
            browser._reader_task = asyncio.get_running_loop().create_task(browser._read_loop())
            await browser.send("Browser.getVersion")
            yield browser
        finally:
            await browser.close()
            log.close()

    async def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 5)
            try:
                await asyncio.to_thread(self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait, 5)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        for fd in (self._rfd, self._wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 << 20)
        pipe = os.fdopen(self._rfd, "rb", buffering=0, closefd=False)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\0")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                msg = json.loads(raw[:-1])
                if "id" in msg:
                    fut = self._pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        if "error" in msg:
                            fut.set_exception(BrowserError(json.dumps(msg["error"])))
                        else:
                            fut.set_result(msg.get("result", {}))
                else:
                    for listener in list(self._listeners):
                        listener(msg)
        finally:
            transport.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(BrowserError("chromium went away"))
            self._pending.clear()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        data = json.dumps(msg).encode() + b"\0"
        await asyncio.to_thread(_write_all, self._wfd, data)
        try:
            return await asyncio.wait_for(fut, COMMAND_TIMEOUT)
        finally:
            self._pending.pop(msg_id, None)

    async def wait_event(
        self,
        method: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _p: True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The params of the next event ``method`` whose params satisfy ``predicate``."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def listener(msg: dict[str, Any]) -> None:
            if msg.get("method") == method and not fut.done() and predicate(msg["params"]):
                fut.set_result(msg["params"])

        self._listeners.append(listener)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._listeners.remove(listener)

    def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime"):
            await page.send(f"{domain}.enable")
        self.listen(page._on_message)
        return page

    async def allow_downloads(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        await self.send(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(directory), "eventsEnabled": True},
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.console: list[str] = []
        self.exceptions: list[str] = []

    def _on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("sessionId") != self.session:
            return
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            exc = details.get("exception", {})
            self.exceptions.append(str(exc.get("description", details.get("text"))))

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        loaded = asyncio.ensure_future(
            self.browser.wait_event("Page.loadEventFired", timeout=timeout)
        )
        try:
            reply = await self.send("Page.navigate", {"url": url})
            if reply.get("errorText"):
                raise BrowserError(f"{url}: {reply['errorText']}")
            await loaded
        finally:
            loaded.cancel()

    async def eval(self, expression: str) -> Any:
        reply = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description", details.get("text"))
            raise BrowserError(f"{expression[:80]}: {text}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Evaluate ``expression`` every 200 ms until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.eval(expression)
            if last:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {what or expression} (last value {last!r}); "
            f"page exceptions {self.exceptions}, console {self.console[-10:]}"
        )

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "deviceScaleFactor": 2 if mobile else 1,
                "mobile": mobile,
            },
        )

    async def center_of(self, selector: str) -> tuple[float, float]:
        box = await self.eval(
            f"""(() => {{
                const node = document.querySelector({json.dumps(selector)});
                if (!node) return null;
                node.scrollIntoView({{block: 'center', inline: 'center'}});
                const r = node.getBoundingClientRect();
                return [r.left + r.width / 2, r.top + r.height / 2];
            }})()"""
        )
        if box is None:
            raise AssertionError(f"no element {selector}")
        return float(box[0]), float(box[1])

    async def click(self, selector: str) -> None:
        """A real left click at the element's centre (scrolled into view first)."""
        x, y = await self.center_of(selector)
        base = {"x": x, "y": y, "button": "left", "clickCount": 1}
        await self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        await self.send("Input.dispatchMouseEvent", {"type": "mousePressed", **base})
        await self.send("Input.dispatchMouseEvent", {"type": "mouseReleased", **base})

    async def type_into(self, selector: str, text: str) -> None:
        """Focus a field, clear it, and type ``text`` as keyboard input."""
        await self.click(selector)
        await self.eval(f"document.querySelector({json.dumps(selector)}).select?.()")
        await self.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Backspace"})
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Backspace"})
        await self.send("Input.insertText", {"text": text})

    async def select_option(self, selector: str, value: str) -> None:
        await self.eval(
            f"""(() => {{
                const s = document.querySelector({json.dumps(selector)});
                s.value = {json.dumps(value)};
                s.dispatchEvent(new Event('change', {{bubbles: true}}));
                return s.value;
            }})()"""
        )

    async def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
        shot = await self.send("Page.captureScreenshot", params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
