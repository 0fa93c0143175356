"""Fixtures for the page tests: a real headless Chromium with a fake microphone (see ``cdp_browser``), and a
gateway with the page whose provider URLs a test chooses (the emulators, or a scripted stand-in)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sttgate.config import Settings
from sttgate.emulators.app import EmulatorConfig
from sttgate.emulators.app import create_app as create_emulator_app
from sttgate.gateway.app import bound_port, create_app, start_site
from sttgate.store import Store

from .cdp_browser import LAUNCH_TIMEOUT, Browser, chromium_path, speech_wav

OPERATOR_KEYS = {"elevenlabs": "emulator-elevenlabs-key", "assemblyai": "emulator-assemblyai-key"}


@dataclass
class PageGateway:
    url: str  # http://127.0.0.1:PORT
    store: Store
    settings: Settings
    account_id: str  # the demo account, whose key is the server's demo_api_key


@pytest.fixture
async def page_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.connect(f"sqlite:///{tmp_path / 'gw.db'}")
    yield store
    await store.close()


@pytest.fixture
async def emulator_url() -> AsyncIterator[str]:
    """Both provider emulators (default keys = ``OPERATOR_KEYS``) on one loopback port: ``ws://127.0.0.1:PORT``."""
    runner = web.AppRunner(create_emulator_app(EmulatorConfig()), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"ws://127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


@pytest.fixture
async def page_gateway(page_store: Store) -> AsyncIterator[Callable[..., Awaitable[PageGateway]]]:
    """Factory: ``await page_gateway(upstream="ws://…", balance_nanos=None, **settings)``.

    ``upstream`` serves both providers' paths (``/v1/speech-to-text/realtime``, ``/v3/ws``); the demo key is a real
    key of a fresh account unless ``demo_api_key`` is given.
    """
    runners: list[web.AppRunner] = []

    async def start(
        *, upstream: str = "ws://127.0.0.1:9", balance_nanos: int | None = None, **overrides: Any
    ) -> PageGateway:
        account = await page_store.create_account(name="demo", balance_nanos=balance_nanos)
        key = (await page_store.create_key(account.id)).key
        values: dict[str, Any] = {
            "elevenlabs_url": f"{upstream}/v1/speech-to-text/realtime",
            "assemblyai_url": f"{upstream}/v3/ws",
            "elevenlabs_api_key": OPERATOR_KEYS["elevenlabs"],
            "assemblyai_api_key": OPERATOR_KEYS["assemblyai"],
            "gateway_id": "page-tests",
            "demo_api_key": key,
            **overrides,
        }
        settings = Settings.model_validate(values)
        app = create_app(settings, store=page_store)
        runner = await start_site(app, "127.0.0.1", 0)
        runners.append(runner)
        return PageGateway(f"http://127.0.0.1:{bound_port(runner)}", page_store, settings, account.id)

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
def chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the page test needs a real browser")
    return path


@pytest.fixture
def fake_microphone(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The WAV Chromium's fake microphone plays: speech, or (parametrized indirectly) a test's own generator."""
    kind = getattr(request, "param", "speech")
    if kind == "speech":
        return speech_wav(tmp_path / "speech.wav")
    return request.module.__dict__[f"_{kind}_wav"](tmp_path / f"{kind}.wav")


@pytest.fixture
async def browser(chromium: str, fake_microphone: Path, tmp_path: Path) -> AsyncIterator[Browser]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
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
