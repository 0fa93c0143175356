"""Fixtures for the page tests: a real headless Chromium with a fake microphone (see ``cdp_browser``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cdp_browser import LAUNCH_TIMEOUT, Browser, chromium_path, speech_wav


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
