"""Shared fixtures for pull tests: the FFmpeg binary, generated media, loopback HTTP servers, and a leak check."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from sttgate.pull.ffmpeg import default_ffmpeg


def ffmpeg_children() -> list[tuple[int, str]]:
    """FFmpeg processes (zombies included) whose parent is this test process."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == me and "ffmpeg" in comm:
            found.append((int(entry), state))
    return found


@pytest.fixture(autouse=True)
def no_ffmpeg_outlives_its_test():
    """Every test: no FFmpeg child (running or zombie) is left once the test and its fixtures are done."""
    yield
    assert ffmpeg_children() == []


@pytest.fixture(scope="session")
def ffmpeg_exe() -> str:
    return default_ffmpeg()


def make_media(ffmpeg: str, *args: str) -> None:
    subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


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


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run an aiohttp app on 127.0.0.1 (a free port); yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def media_server(media_dir: Path) -> AsyncIterator[str]:
    """The generated media over HTTP on loopback."""
    app = web.Application()
    app.router.add_static("/media", media_dir)
    async with serve(app) as base:
        yield base + "/media"


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll a condition with a bounded timeout (for state that has no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
