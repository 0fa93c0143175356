"""A real headless Chromium (Debian's package), driven over the DevTools protocol with aiohttp (no Playwright).

The microphone is Chromium's fake capture device playing a WAV of speech (the bundled espeak-ng sample followed by
silence, looped by Chromium), so the page runs its real getUserMedia → AudioWorklet → WebSocket path.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
LAUNCH_TIMEOUT = 30.0
# A name Chromium resolves to loopback but does not count as local: a page loaded from it over plain HTTP is not a
# secure context, as for a visitor on another machine (tests stay on 127.0.0.1).
INSECURE_HOST = "insecure.test"
# Upper bound for anything we wait on in the page; a wait ends as soon as its condition holds.
PAGE_TIMEOUT = 60.0


def chromium_path() -> str | None:
    return next((path for name in CHROMIUM_CANDIDATES if (path := shutil.which(name))), None)


def speech_wav(path: Path, silence_seconds: float = 2.0) -> Path:
    """The bundled speech sample (16 kHz mono s16le) followed by silence, so a looping capture has pauses."""
    with (
        resources.as_file(resources.files("sttgate") / "data" / "sample.wav") as sample,
        wave.open(str(sample)) as src,
    ):
        params = src.getparams()
        frames = src.readframes(src.getnframes())
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + b"\x00\x00" * int(params.framerate * silence_seconds))
    return path


class DevToolsError(RuntimeError):
    pass


class Page:
    """One browser tab over a flattened DevTools session."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.console: list[str] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def navigate(self, url: str) -> None:
        loaded = self.browser.expect("Page.loadEventFired", self.session_id)
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded, PAGE_TIMEOUT)

    async def evaluate(self, expression: str, *, user_gesture: bool = False) -> Any:
        """Run ``expression`` in the page, await it if it is a promise, and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
            userGesture=user_gesture,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"{text}\nconsole:\n" + "\n".join(self.console))
        return result["result"].get("value")

    async def wait_for(self, condition: str, what: str) -> Any:
        """Resolve as soon as the JS ``condition`` is truthy (checked on every DOM change), with an upper bound."""
        script = f"""
        new Promise((resolve, reject) => {{
          const check = () => {{ const v = ({condition}); if (v) {{ observer.disconnect(); resolve(v); }} }};
          const observer = new MutationObserver(check);
          observer.observe(document.body, {{subtree: true, childList: true, characterData: true, attributes: true}});
          setTimeout(() => {{ observer.disconnect(); reject(new Error("timed out waiting for: {what}")); }},
                     {int(PAGE_TIMEOUT * 1000)});
          check();
        }})"""
        return await self.evaluate(script)

    async def screenshot(self) -> bytes:
        """The whole page as PNG bytes."""
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


class Browser:
    """A Chromium process and its browser-level DevTools WebSocket."""

    def __init__(self, process: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"])
                if "error" in data:
                    future.set_exception(DevToolsError(str(data["error"])))
                else:
                    future.set_result(data.get("result", {}))
                continue
            self._event(data)
        for future in self._pending.values():
            future.set_exception(DevToolsError("the browser connection closed"))

    def _event(self, data: dict[str, Any]) -> None:
        method, session_id, params = data["method"], data.get("sessionId"), data.get("params", {})
        page = self._pages.get(session_id or "")
        if page is not None and method == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            page.console.append(f"console.{params.get('type')}: {args}")
        elif page is not None and method == "Runtime.exceptionThrown":
            page.console.append(f"exception: {params['exceptionDetails'].get('text')}")
        for waiter in list(self._waiters):
            if waiter[0] == method and waiter[1] in (None, session_id) and not waiter[2].done():
                waiter[2].set_result(params)
                self._waiters.remove(waiter)

    def expect(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, future))
        return future

    async def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None) -> Any:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, PAGE_TIMEOUT)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=1000, height=760, deviceScaleFactor=1, mobile=False)
        return page


@asynccontextmanager
async def launch_browser(chromium: str, fake_microphone: Path, profile: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with ``fake_microphone`` as its microphone and ``profile`` (a new directory) as its user
    data."""
    process = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_microphone}",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []

    async def devtools_url() -> str:
        assert process.stderr is not None
        while line := (await process.stderr.readline()).decode(errors="replace"):
            log.append(line.rstrip())
            if line.startswith("DevTools listening on "):
                return line.removeprefix("DevTools listening on ").strip()
        raise RuntimeError("Chromium exited before DevTools was ready:\n" + "\n".join(log))

    async def drain() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            log.append(line.decode(errors="replace").rstrip())

    drainer: asyncio.Task[None] | None = None
    try:
        ws_url = await asyncio.wait_for(devtools_url(), LAUNCH_TIMEOUT)
        drainer = asyncio.create_task(drain())
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
            browser = Browser(process, ws)
            yield browser
            await browser.send("Browser.close")
            browser._reader.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        if drainer is not None:
            await drainer
