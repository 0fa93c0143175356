"""Helpers of the pull tests: FFmpeg children of this process, generated media, webhook receivers, a pull gateway."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sttgate.emulators.recorder import Recorder
from sttgate.pull.manager import PullManager
from sttgate.web.services import SERVICES
from tests.support.emulator import EmulatorServer
from tests.support.gateway import RunningApp
from tests.support.waiting import wait_for


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening(host: str, port: int) -> bool:
    """Whether something listens on host:port (IPv4), read from /proc (a probe connection would be the RTMP
    server's one client)."""
    wanted = f"{int(ipaddress.IPv4Address(host).packed[::-1].hex(), 16):08X}:{port:04X}"
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local == wanted:
                return True
    return False


@asynccontextmanager
async def rtmp_publisher(
    ffmpeg: str, seconds: int, *, host: str = "127.0.0.1", port: int | None = None
) -> AsyncIterator[str]:
    """FFmpeg as a one-client RTMP server publishing a live tone (real time, AAC in FLV) on host:port."""
    port = port or free_port(host)
    url = f"rtmp://{host}:{port}/live/stream"
    proc = await asyncio.create_subprocess_exec(
        *(ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-re"),
        *("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"),
        *("-f", "flv", "-listen", "1", url),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: listening(host, port) or proc.returncode is not None)
        yield url
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def make_media(ffmpeg: str, *args: str) -> None:
    subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


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


@dataclass
class PullGateway:
    """A gateway with pull mode (``running``), its own emulator, and a client session."""

    running: RunningApp
    emulator: EmulatorServer
    http: aiohttp.ClientSession
    base: str  # http://127.0.0.1:PORT (kept after a shutdown)

    @property
    def app(self) -> web.Application:
        return self.running.app

    async def shutdown(self) -> None:
        """Stop the gateway the way the runner clean-up does (no drain): live tasks end ``gateway_shutdown``."""
        await self.running.runner.cleanup()

    @property
    def recorder(self) -> Recorder:
        return self.emulator.recorder

    @property
    def manager(self) -> PullManager:
        return self.app[SERVICES].pull

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
