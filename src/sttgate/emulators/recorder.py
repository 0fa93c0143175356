"""What the emulators received: one :class:`SessionRecord` per WebSocket handshake.

In-process (tests that run the emulator app in their own event loop)::

    recorder = app[RECORDER]
    mark = recorder.next_seq
    ...  # connect through the gateway
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.query_string == "sample_rate=16000&format_turns=True"
    assert rec.audio_bytes == 32000

Waiting is event driven: every change (a session appears, a frame arrives, a session ends) wakes the
waiters, which re-check their predicate; nothing polls with sleeps.

Out-of-process: ``GET /_emulator/sessions`` returns :meth:`SessionRecord.to_json` for every session
(no payloads), ``GET /_emulator/sessions/{seq}`` one of them, ``DELETE /_emulator/sessions`` forgets
them all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web

T = TypeVar("T")

# Who ended a session.
CLOSED_BY_CLIENT = "client"  # the client sent a close frame (the emulator echoed it)
CLOSED_BY_EMULATOR = "emulator"  # the emulator sent a close frame
CLOSED_BY_DROP = "emulator_drop"  # the emulator aborted the TCP connection (emu_drop_*)
CLOSED_BY_LOST = "lost"  # the connection died without a close frame from the client
CLOSED_BY_REFUSED = "refused"  # the upgrade was refused with an HTTP status (emu_handshake_status)
CLOSED_BY_SHUTDOWN = "shutdown"  # the emulator server shut down


@dataclass(slots=True)
class RecordedFrame:
    t: float  # seconds since the handshake request arrived
    type: str  # "text" | "binary"
    size: int  # payload bytes (UTF-8 length for text)
    data: str | bytes | None  # None once the session's payload cap is used up

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "type": self.type, "size": self.size}


@dataclass(slots=True)
class AudioChunk:
    t: float  # seconds since the handshake request arrived
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "bytes": self.bytes, "seconds": round(self.seconds, 6)}


@dataclass(eq=False)
class SessionRecord:
    """Everything one emulator session saw. Frames are in arrival order; ``frames_in`` holds what the
    client sent, ``frames_out`` what the emulator sent. Lists stop growing at the recorder's caps; the
    counters never do."""

    seq: int
    provider: str  # "elevenlabs" | "assemblyai"
    path: str
    query_string: str  # raw, byte-exact as received (not decoded)
    headers: list[tuple[str, str]]
    remote: str | None
    started_at: float  # Unix time of the handshake request
    t0: float  # loop time of the handshake request
    id: str | None = None  # the provider session id (session_started / Begin), once sent
    mode: str = "normal"  # "normal" | "echo"
    accepted: bool = False  # the 101 was sent
    http_status: int | None = None  # 101, or the refusal status
    accepted_at: float | None = None  # seconds since t0
    authenticated: bool | None = None
    frames_in: list[RecordedFrame] = field(default_factory=list)
    frames_out: list[RecordedFrame] = field(default_factory=list)
    text_frames_in: int = 0
    binary_frames_in: int = 0
    bytes_in: int = 0
    text_frames_out: int = 0
    binary_frames_out: int = 0
    bytes_out: int = 0
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    audio_chunks: list[AudioChunk] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None
    client_close_code: int | None = None  # the code of the client's close frame (initiated or echoed)
    client_close_reason: str | None = None
    ended_at: float | None = None  # seconds since t0
    _recorder: Recorder | None = field(default=None, repr=False)
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _payload_budget: int = field(default=0, repr=False)
    _stored_payload: int = field(default=0, repr=False)
    _stored_frames: int = field(default=0, repr=False)

    # --- reading ------------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def frames_in_count(self) -> int:
        return self.text_frames_in + self.binary_frames_in

    @property
    def frames_out_count(self) -> int:
        return self.text_frames_out + self.binary_frames_out

    @property
    def query(self) -> list[tuple[str, str]]:
        """The query decoded into pairs, in order, repeated keys kept."""
        return parse_qsl(self.query_string, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def texts_in(self) -> list[str]:
        return [f.data for f in self.frames_in if f.type == "text" and isinstance(f.data, str)]

    def texts_out(self) -> list[str]:
        return [f.data for f in self.frames_out if f.type == "text" and isinstance(f.data, str)]

    def json_in(self) -> list[Any]:
        """Text frames received, parsed (None for a frame that is not JSON)."""
        out = []
        for s in self.texts_in():
            try:
                out.append(json.loads(s))
            except ValueError:
                out.append(None)
        return out

    def json_out(self) -> list[Any]:
        return [json.loads(s) for s in self.texts_out()]

    def binary_in(self) -> list[bytes]:
        return [f.data for f in self.frames_in if f.type == "binary" and isinstance(f.data, bytes)]

    async def wait_ended(self, timeout: float | None = 5.0) -> SessionRecord:
        await asyncio.wait_for(self._ended.wait(), timeout)
        return self

    async def wait_until(self, predicate: Callable[[SessionRecord], Any], timeout: float | None = 5.0) -> Any:
        """Wait until ``predicate(self)`` is truthy (re-checked on every change) and return its value."""
        if self._recorder is None:
            raise RuntimeError("record is detached from its recorder")
        return await self._recorder.wait_until(lambda _r: predicate(self), timeout)

    async def wait_for_frames_in(self, n: int, timeout: float | None = 5.0) -> SessionRecord:
        await self.wait_until(lambda r: r.frames_in_count >= n, timeout)
        return self

    def to_json(self, *, payloads: bool = False) -> dict[str, Any]:
        def frames(lst: list[RecordedFrame]) -> list[dict[str, Any]]:
            if not payloads:
                return [f.to_json() for f in lst]
            out = []
            for f in lst:
                d = f.to_json()
                if isinstance(f.data, bytes):
                    d["data_hex"] = f.data.hex()
                elif f.data is not None:
                    d["data"] = f.data
                out.append(d)
            return out

        return {
            "seq": self.seq,
            "id": self.id,
            "provider": self.provider,
            "mode": self.mode,
            "path": self.path,
            "query_string": self.query_string,
            "headers": [[k, v] for k, v in self.headers],
            "remote": self.remote,
            "started_at": self.started_at,
            "accepted": self.accepted,
            "accepted_at": self.accepted_at,
            "http_status": self.http_status,
            "authenticated": self.authenticated,
            "ended": self.ended,
            "ended_at": self.ended_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
            "client_close_code": self.client_close_code,
            "client_close_reason": self.client_close_reason,
            "counts": {
                "text_frames_in": self.text_frames_in,
                "binary_frames_in": self.binary_frames_in,
                "bytes_in": self.bytes_in,
                "text_frames_out": self.text_frames_out,
                "binary_frames_out": self.binary_frames_out,
                "bytes_out": self.bytes_out,
            },
            "audio": {
                "bytes": self.audio_bytes,
                "seconds": round(self.audio_seconds, 6),
                "chunks": [c.to_json() for c in self.audio_chunks],
            },
            "frames_in": frames(self.frames_in),
            "frames_out": frames(self.frames_out),
        }

    # --- writing (the emulator) ---------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def _frame(self, lst: list[RecordedFrame], kind: str, data: str | bytes, size: int) -> None:
        rec = self._recorder
        if rec is None or len(lst) >= rec.max_frames or rec._frames_total >= rec.max_total_frames:
            return
        keep: str | bytes | None = None
        if size <= self._payload_budget and rec._payload_total + size <= rec.max_total_payload_bytes:
            self._payload_budget -= size
            self._stored_payload += size
            rec._payload_total += size
            keep = data
        self._stored_frames += 1
        rec._frames_total += 1
        lst.append(RecordedFrame(self._now(), kind, size, keep))

    def add_frame_in(self, kind: str, data: str | bytes) -> None:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if kind == "text":
            self.text_frames_in += 1
        else:
            self.binary_frames_in += 1
        self.bytes_in += size
        self._frame(self.frames_in, kind, data, size)
        self._notify()

    def add_frame_out(self, kind: str, data: str | bytes) -> None:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if kind == "text":
            self.text_frames_out += 1
        else:
            self.binary_frames_out += 1
        self.bytes_out += size
        self._frame(self.frames_out, kind, data, size)
        self._notify()

    def add_audio(self, nbytes: int, seconds: float) -> None:
        self.audio_bytes += nbytes
        self.audio_seconds += seconds
        rec = self._recorder
        if rec is not None and len(self.audio_chunks) < rec.max_frames and rec._frames_total < rec.max_total_frames:
            self._stored_frames += 1
            rec._frames_total += 1
            self.audio_chunks.append(AudioChunk(self._now(), nbytes, seconds))

    def mark_accepted(self, mode: str) -> None:
        self.accepted = True
        self.http_status = 101
        self.mode = mode
        self.accepted_at = self._now()
        self._notify()

    def mark_refused(self, status: int) -> None:
        self.http_status = status
        self.finish(None, None, CLOSED_BY_REFUSED)

    def set_close(self, code: int | None, reason: str | None, closed_by: str) -> None:
        """Record who closed first; later calls do not overwrite it."""
        if self.closed_by is None:
            self.close_code, self.close_reason, self.closed_by = code, reason, closed_by
            self._notify()

    def finish(self, code: int | None = None, reason: str | None = None, closed_by: str | None = None) -> None:
        if closed_by is not None:
            self.set_close(code, reason, closed_by)
        if not self._ended.is_set():
            self.ended_at = self._now()
            self._ended.set()
            self._notify()

    def _notify(self) -> None:
        rec = self._recorder
        if rec is not None and rec._waiters:
            rec._changed()


class Recorder:
    """All sessions the emulator app saw, oldest first, with event-driven waiting."""

    def __init__(
        self,
        *,
        max_frames: int = 5000,
        max_payload_bytes: int = 8 << 20,
        max_sessions: int = 1000,
        max_total_frames: int = 1_000_000,
        max_total_payload_bytes: int = 256 << 20,
    ) -> None:
        self.max_frames = max_frames  # per session and direction (frames and audio chunks kept)
        self.max_payload_bytes = max_payload_bytes  # per session: payload bytes kept, both directions
        self.max_sessions = max_sessions  # ended sessions beyond this are forgotten, oldest first
        # Budgets over all sessions kept, so a long-running emulator under load stays bounded: past them,
        # new frames are counted but not listed (frames) or listed without payload (payload bytes).
        self.max_total_frames = max_total_frames
        self.max_total_payload_bytes = max_total_payload_bytes
        self.sessions: list[SessionRecord] = []
        self._seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._frames_total = 0
        self._payload_total = 0

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next session will get: pass it as ``since=`` to wait only for newer ones."""
        return self._seq + 1

    @property
    def last(self) -> SessionRecord | None:
        return self.sessions[-1] if self.sessions else None

    def get(self, seq_or_id: int | str) -> SessionRecord | None:
        for s in self.sessions:
            if s.seq == seq_or_id or (s.id is not None and s.id == seq_or_id):
                return s
        return None

    def find(self, *, provider: str | None = None, since: int = 0) -> list[SessionRecord]:
        return [s for s in self.sessions if s.seq >= since and (provider is None or s.provider == provider)]

    def clear(self) -> None:
        for s in self.sessions:
            self._release(s)
        self.sessions.clear()
        self._changed()

    def _release(self, s: SessionRecord) -> None:
        self._frames_total -= s._stored_frames
        self._payload_total -= s._stored_payload
        s._stored_frames = s._stored_payload = 0

    def new_session(
        self, *, provider: str, path: str, query_string: str, headers: list[tuple[str, str]], remote: str | None
    ) -> SessionRecord:
        self._seq += 1
        rec = SessionRecord(
            seq=self._seq,
            provider=provider,
            path=path,
            query_string=query_string,
            headers=headers,
            remote=remote,
            started_at=time.time(),
            t0=asyncio.get_running_loop().time(),
        )
        rec._recorder = self
        rec._payload_budget = self.max_payload_bytes
        self.sessions.append(rec)
        if len(self.sessions) > self.max_sessions:
            ended = [s for s in self.sessions if s.ended]
            for s in ended[: len(self.sessions) - self.max_sessions]:
                self._release(s)
                self.sessions.remove(s)
        self._changed()
        return rec

    async def wait_until(self, predicate: Callable[[Recorder], T | None], timeout: float | None = 5.0) -> T:
        """Wait until ``predicate(recorder)`` is truthy and return its value; re-checked on every change."""

        async def waiter() -> T:
            loop = asyncio.get_running_loop()
            while True:
                value = predicate(self)
                if value:
                    return value
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.add(fut)
                try:
                    await fut
                finally:
                    self._waiters.discard(fut)

        return await asyncio.wait_for(waiter(), timeout)

    async def wait_for_session(
        self,
        predicate: Callable[[SessionRecord], Any] | None = None,
        *,
        provider: str | None = None,
        since: int = 0,
        accepted: bool = False,
        timeout: float | None = 5.0,
    ) -> SessionRecord:
        """The first session (oldest first) with ``seq >= since``, of ``provider`` if given, accepted (101
        sent) if ``accepted``, and for which ``predicate`` is truthy."""

        def match(r: Recorder) -> SessionRecord | None:
            for s in r.sessions:
                if s.seq < since or (provider is not None and s.provider != provider):
                    continue
                if accepted and not s.accepted:
                    continue
                if predicate is None or predicate(s):
                    return s
            return None

        return await self.wait_until(match, timeout)

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def to_json(self, *, payloads: bool = False) -> dict[str, Any]:
        return {"sessions": [s.to_json(payloads=payloads) for s in self.sessions]}


RECORDER: web.AppKey[Recorder] = web.AppKey("sttgate_emulator_recorder", Recorder)
