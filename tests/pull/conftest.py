"""Shared fixtures for pull tests: the FFmpeg binary, generated media, loopback HTTP servers, and a leak check."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sttgate.emulators.assemblyai import AssemblyAIOptions
from sttgate.gateway.tracing import Tracing
from sttgate.pull.ffmpeg import default_ffmpeg
from sttgate.store import Store
from tests.support.emulator import emulator_config, running_emulator
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.pull import PullGateway, Receiver, ffmpeg_children, make_media
from tests.support.servers import serve_app


@pytest.fixture(autouse=True)
def no_ffmpeg_outlives_its_test():
    """Every test: no FFmpeg child (running or zombie) is left once the test and its fixtures are done."""
    yield
    assert ffmpeg_children() == []


@pytest.fixture(scope="session")
def ffmpeg_exe() -> str:
    return default_ffmpeg()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> Path:
    """A 3 s tone (WAV), a 60 s tone (WAV), and a 3 s HLS playlist in 1 s AAC segments, all made by FFmpeg."""
    root = tmp_path_factory.mktemp("media")
    make_media(
        ffmpeg_exe, "-f", "lavfi", "-i", "sine=frequency=440:duration=3:sample_rate=16000", str(root / "tone3.wav")
    )
    make_media(
        ffmpeg_exe, "-f", "lavfi", "-i", "sine=frequency=440:duration=60:sample_rate=16000", str(root / "tone60.wav")
    )
    hls = root / "hls"
    hls.mkdir()
    make_media(
        ffmpeg_exe,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=3",
        "-c:a",
        "aac",
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_list_size",
        "0",
        str(hls / "index.m3u8"),
    )
    return root


@pytest.fixture
async def media_server(media_dir: Path) -> AsyncIterator[str]:
    """The generated media over HTTP on loopback."""
    app = web.Application()
    app.router.add_static("/media", media_dir)
    async with serve_app(app) as base:
        yield base + "/media"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with serve_app(app) as base:
        yield rec, base + "/hook"


@pytest.fixture
async def pull_gateway(store: Store) -> AsyncIterator[Callable[..., Awaitable[PullGateway]]]:
    """Factory: ``await pull_gateway(tracing=None, **settings_overrides)``: emulators (strict AssemblyAI real-time
    check) and a gateway with pull mode on the shared store (sessions traced with ``tracing`` if given). Private
    addresses are allowed unless overridden."""
    numbers = itertools.count(1)
    async with AsyncExitStack() as stack:

        async def start(tracing: Tracing | None = None, **overrides: Any) -> PullGateway:
            config = emulator_config(assemblyai=AssemblyAIOptions(rate_tolerance=1.0, rate_burst_seconds=0.5))
            emulator = await stack.enter_async_context(running_emulator(config))
            pull = {"pull_allow_private": True, "webhook_backoff_seconds": 0.05, "webhook_backoff_max_seconds": 0.2}
            settings = gateway_settings(emulator, gateway_id=f"pull-test-{next(numbers)}", **{**pull, **overrides})
            running = await stack.enter_async_context(running_gateway(settings, store, tracing=tracing))
            http = aiohttp.ClientSession()
            stack.push_async_callback(http.close)
            return PullGateway(running, emulator, http, running.http_url)

        yield start
