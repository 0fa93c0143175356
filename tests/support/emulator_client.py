"""Helpers of the emulator tests: generated PCM, frame builders, a client of a running emulator, message collection."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from sttgate.emulators.app import RECORDER
from sttgate.emulators.recorder import Recorder
from sttgate.emulators.transcriber import silence_pcm16, tone_pcm16
from tests.support.emulator import EMULATOR_PATHS

EL_KEY = "emulator-elevenlabs-key"
AAI_KEY = "emulator-assemblyai-key"
EL_PATH = EMULATOR_PATHS["elevenlabs"]
AAI_PATH = EMULATOR_PATHS["assemblyai"]
EL_QUERY = "model_id=scribe_v2_realtime&audio_format=pcm_16000&commit_strategy=manual&include_timestamps=false"
AAI_QUERY = "sample_rate=16000"

_MISSING = object()


def tone(seconds: float, rate: int = 16000) -> bytes:
    """A 300 Hz tone: voiced audio."""
    return tone_pcm16(seconds, sample_rate=rate)


def silence(seconds: float, rate: int = 16000) -> bytes:
    return silence_pcm16(seconds, sample_rate=rate)


def el_chunk(
    pcm: bytes, *, commit: bool = False, sample_rate: int | None = 16000, previous_text: Any = _MISSING
) -> str:
    """An ElevenLabs ``input_audio_chunk`` frame, as the Python SDK builds it."""
    msg: dict[str, Any] = {
        "message_type": "input_audio_chunk",
        "audio_base_64": base64.b64encode(pcm).decode(),
        "commit": commit,
    }
    if sample_rate is not None:
        msg["sample_rate"] = sample_rate
    if previous_text is not _MISSING:
        msg["previous_text"] = previous_text
    return json.dumps(msg)


def el_commit() -> str:
    return el_chunk(b"", commit=True)


def frames(pcm: bytes, ms: int = 100, rate: int = 16000, bytes_per_sample: int = 2) -> list[bytes]:
    size = rate * ms // 1000 * bytes_per_sample
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


@dataclass
class Closed:
    code: int | None
    reason: str


@dataclass
class Emu:
    app: web.Application
    port: int
    http: aiohttp.ClientSession

    @property
    def recorder(self) -> Recorder:
        return self.app[RECORDER]

    def http_url(self, path: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def ws_url(self, path: str, query: str = "") -> URL:
        """Sent byte for byte (``encoded=True``: yarl would otherwise re-encode the query)."""
        return URL(f"ws://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else ""), encoded=True)

    async def el(
        self, query: str = EL_QUERY, *, key: str | None = EL_KEY, path: str = EL_PATH, **kwargs: Any
    ) -> aiohttp.ClientWebSocketResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["xi-api-key"] = key
        return await self.http.ws_connect(self.ws_url(path, query), headers=headers, **kwargs)

    async def aai(
        self, query: str = AAI_QUERY, *, key: str | None = AAI_KEY, path: str = AAI_PATH, **kwargs: Any
    ) -> aiohttp.ClientWebSocketResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = key
        return await self.http.ws_connect(self.ws_url(path, query), headers=headers, **kwargs)


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> dict[str, Any] | Closed:
    """The next JSON message, or :class:`Closed` when the server closed (or the connection died)."""
    msg = await ws.receive(timeout=timeout)
    if msg.type is WSMsgType.TEXT:
        return json.loads(msg.data)
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return Closed(ws.close_code, msg.extra or "")
    raise AssertionError(f"unexpected frame {msg.type}: {msg.data!r}")


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> dict[str, Any]:
    m = await recv(ws, timeout)
    assert not isinstance(m, Closed), f"socket closed: {m}"
    return m


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse, pred: Callable[[dict[str, Any]], bool], timeout: float = 3.0
) -> list[dict[str, Any]]:
    """Messages up to and including the first for which ``pred`` holds."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            m = await recv_json(ws)
            out.append(m)
            if pred(m):
                return out


async def recv_until_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> tuple[list[dict], Closed]:
    """Every message until the server closes; returns them and the close."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            m = await recv(ws)
            if isinstance(m, Closed):
                return out, m
            out.append(m)


async def assert_silent(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.15) -> None:
    """Nothing arrives for ``seconds``."""
    try:
        msg = await ws.receive(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {msg.type} {msg.data!r}")
