"""Shared fixtures for pull tests: the FFmpeg binary, generated media, loopback HTTP servers, and a leak check."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sttgate.config import Settings
from sttgate.emulators.app import RECORDER, EmulatorConfig
from sttgate.emulators.app import create_app as create_emulator_app
from sttgate.emulators.recorder import Recorder
from sttgate.gateway.app import bound_port, create_app, start_site
from sttgate.pull.api import PULL
from sttgate.pull.ffmpeg import default_ffmpeg
from sttgate.pull.manager import PullManager
from sttgate.store import Store


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


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll a condition with a bounded timeout (for state that has no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- a gateway with pull mode, the provider emulators, and webhook receivers -------------------------------------

EMU_ELEVENLABS_KEY = "pull-tests-elevenlabs-key"
EMU_ASSEMBLYAI_KEY = "pull-tests-assemblyai-key"


@dataclass
class Receiver:
    """A webhook endpoint that records every POST and answers from a script of statuses (then 200)."""

    script: list[int] = field(default_factory=list)
    posts: list[tuple[bytes, dict[str, str], int, float]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.gate is not None:
            await self.gate.wait()
        status = self.script.pop(0) if self.script else 200
        self.posts.append((body, dict(request.headers), status, asyncio.get_running_loop().time()))
        self.changed.set()
        return web.Response(status=status, text="ok")

    def accepted(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _, status, _ in self.posts if status == 200]

    def ended(self) -> list[dict[str, Any]]:
        return [e for e in self.accepted() if e["event"] == "ended"]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with serve(app) as base:
        yield rec, base + "/hook"


@dataclass
class PullGateway:
    app: web.Application
    base: str
    settings: Settings
    emulator: web.Application
    http: aiohttp.ClientSession
    runner: web.AppRunner

    async def shutdown(self) -> None:
        """Stop the gateway the way the runner clean-up does (no drain): live tasks end ``gateway_shutdown``."""
        await self.runner.cleanup()

    @property
    def recorder(self) -> Recorder:
        return self.emulator[RECORDER]

    @property
    def manager(self) -> PullManager:
        return self.app[PULL]

    async def call(self, method: str, path: str, key: str | None, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def start(self, key: str | None, body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/api/v2/audio-stream/start", key, body)

    async def stop(self, key: str | None, task_id: str) -> tuple[int, Any]:
        return await self.call("POST", "/api/v2/audio-stream/stop", key, {"task_id": task_id})

    async def task(self, key: str | None, task_id: str) -> tuple[int, Any]:
        return await self.call("GET", f"/api/v2/audio-stream/tasks/{task_id}", key)

    async def wait_status(self, key: str, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The task's view once it has ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status, body = await self.task(key, task_id)
            assert status == 200, body
            if body["data"]["ended_at"] is not None:
                return body["data"]
            if loop.time() > deadline:
                raise AssertionError(f"task {task_id} did not end: {body}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def pull_gateway(store: Store) -> AsyncIterator[Callable[..., Awaitable[PullGateway]]]:
    """Factory: ``await pull_gateway(**settings_overrides)``: emulators (strict AssemblyAI real-time check) and a
    gateway with pull mode on the shared store. Private addresses are allowed unless overridden."""
    runners: list[web.AppRunner] = []
    clients: list[aiohttp.ClientSession] = []

    async def start(emulator_config: dict[str, Any] | None = None, **overrides: Any) -> PullGateway:
        emu_app = create_emulator_app(
            EmulatorConfig(
                elevenlabs_api_keys=(EMU_ELEVENLABS_KEY,),
                assemblyai_api_keys=(EMU_ASSEMBLYAI_KEY,),
                assemblyai_rate_tolerance=1.0,
                assemblyai_rate_burst_seconds=0.5,
                **(emulator_config or {}),
            )
        )
        emu_runner = web.AppRunner(emu_app, handle_signals=False)
        await emu_runner.setup()
        await web.TCPSite(emu_runner, "127.0.0.1", 0).start()
        runners.append(emu_runner)
        emu = f"ws://127.0.0.1:{bound_port(emu_runner)}"
        values: dict[str, Any] = {
            "database_url": "sqlite:///unused.db",
            "elevenlabs_url": f"{emu}/v1/speech-to-text/realtime",
            "assemblyai_url": f"{emu}/v3/ws",
            "elevenlabs_api_key": EMU_ELEVENLABS_KEY,
            "assemblyai_api_key": EMU_ASSEMBLYAI_KEY,
            "gateway_id": f"pull-test-{len(runners)}",
            "pull_allow_private": True,
            "webhook_backoff_seconds": 0.05,
            "webhook_backoff_max_seconds": 0.2,
            **overrides,
        }
        settings = Settings.model_validate(values)
        app = create_app(settings, store=store)
        runner = await start_site(app, "127.0.0.1", 0)
        runners.insert(0, runner)
        http = aiohttp.ClientSession()
        clients.append(http)
        return PullGateway(app, f"http://127.0.0.1:{bound_port(runner)}", settings, emu_app, http, runner)

    try:
        yield start
    finally:
        for http in clients:
            await http.close()
        for runner in runners:
            await runner.cleanup()
