"""Load generator worker: one process, one uvloop event loop, many standard streams.

The parent (``bench.run``) drives each worker over a pipe with small commands (open N streams, measure,
handshake burst, close). Every stream sends a stamped 1,600-byte binary frame 20 times a second; the upstream
echoes the stamp of every 5th frame in a text frame, and the worker records the round trip on arrival. One
ticker per process paces all its streams in 10 slots per 50 ms, so the generator's own cost stays small.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import uvloop

from bench.upstream import raise_nofile
from bench.wire import FRAME_BYTES, FRAMES_PER_SECOND, STAMP

SLOTS = 10
PAD = bytes(FRAME_BYTES - STAMP.size)
OPEN_CONCURRENCY = 64
WS_OPTIONS: dict[str, Any] = {"compress": 0, "autoping": True, "max_msg_size": 0, "decode_text": False}


@dataclass(eq=False)
class _Stream:
    ws: aiohttp.ClientWebSocketResponse
    seq: int = 0
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"http_{exc.status}"
    return type(exc).__name__


class LoadWorker:
    """The streams of one generator process and the commands that drive them."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.slots: list[list[_Stream]] = [[] for _ in range(SLOTS)]
        self.count = 0
        self.recording = False
        self.closing: set[_Stream] = set()
        self._reset()

    def _reset(self) -> None:
        self.rtts_us = array("d")
        self.lateness_ms = array("d")
        self.sent = 0
        self.received = 0
        self.dropped_ticks = 0
        self.errors: Counter[str] = Counter()

    async def run(self, conn: Connection) -> None:
        """Serve commands from the parent until ``quit``; replies are plain dicts."""
        loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        ticker = asyncio.create_task(self._ticker())
        try:
            while True:
                name, kwargs = await loop.run_in_executor(None, conn.recv)
                if name == "quit":
                    break
                conn.send(await getattr(self, f"cmd_{name}")(**kwargs))
        finally:
            ticker.cancel()
            await self.cmd_close_all()
            await self.session.close()
        conn.send({"ok": True})

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        tick = 1.0 / FRAMES_PER_SECOND / SLOTS
        start = loop.time()
        k = 0
        while True:
            delay = start + k * tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0 / FRAMES_PER_SECOND:
                # Over one frame period behind: this generator is saturated; skip rather than burst.
                skipped = int(-delay / tick)
                k += skipped
                if self.recording:
                    self.dropped_ticks += skipped
            elif self.recording:
                self.lateness_ms.append(-delay * 1000.0)
            slot = tuple(self.slots[k % SLOTS])
            k += 1
            for stream in slot:
                if stream.ws.closed:
                    continue
                stream.seq += 1
                try:
                    await stream.ws.send_bytes(STAMP.pack(stream.seq, time.monotonic_ns()) + PAD)
                except (ConnectionError, RuntimeError) as exc:
                    self.errors[f"send_{type(exc).__name__}"] += 1
                    continue
                if self.recording:
                    self.sent += 1

    async def _read(self, stream: _Stream) -> None:
        ws = stream.ws
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT and self.recording:
                    now = time.monotonic_ns()
                    data = msg.data
                    i = data.find(b'"t":', 0, 48)
                    if i >= 0:
                        self.rtts_us.append((now - int(data[i + 4 : data.index(b",", i)])) / 1000.0)
                    self.received += 1
        except Exception as exc:  # a reader must never die silently
            self.errors[f"read_{type(exc).__name__}"] += 1
        if stream not in self.closing:
            self.errors[f"closed_{ws.close_code}"] += 1
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        for slot in self.slots:
            if stream in slot:
                slot.remove(stream)
                self.count -= 1
                return

    async def _open(self, url: str, headers: dict[str, str]) -> None:
        assert self.session is not None
        try:
            ws = await self.session.ws_connect(url, headers=headers, **WS_OPTIONS)
        except Exception as exc:
            self.errors[_error_name(exc)] += 1
            return
        stream = _Stream(ws)
        stream.reader = asyncio.create_task(self._read(stream))
        min(self.slots, key=len).append(stream)
        self.count += 1

    async def cmd_target(self, url: str, headers: dict[str, str], n: int, rate: float) -> dict[str, Any]:
        """Open streams (at most ``rate`` per second) or close some until ``n`` are open."""
        self.errors.clear()
        if self.count > n:
            excess = [s for slot in self.slots for s in slot][n:]
            await self._close(excess)
        sem = asyncio.Semaphore(OPEN_CONCURRENCY)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(max(0, n - self.count)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            task = asyncio.create_task(self._open(url, headers))
            task.add_done_callback(lambda _t: sem.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        return {"open": self.count, "errors": dict(self.errors)}

    async def cmd_measure(self, seconds: float) -> dict[str, Any]:
        """Record round trips, frames and ticker lateness for ``seconds``."""
        self._reset()
        self.recording = True
        await asyncio.sleep(seconds)
        self.recording = False
        return {
            "open": self.count,
            "sent": self.sent,
            "received": self.received,
            "dropped_ticks": self.dropped_ticks,
            "rtts_us": self.rtts_us.tobytes(),
            "lateness_ms": self.lateness_ms.tobytes(),
            "errors": dict(self.errors),
        }

    async def cmd_handshake(
        self, url: str, headers: dict[str, str], seconds: float, concurrency: int
    ) -> dict[str, Any]:
        """Open and close sessions back to back from ``concurrency`` tasks; time each opening."""
        assert self.session is not None
        session = self.session
        times_ms = array("d")
        errors: Counter[str] = Counter()
        deadline = time.monotonic() + seconds

        async def loop_one() -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    ws = await session.ws_connect(url, headers=headers, **WS_OPTIONS)
                except Exception as exc:
                    errors[_error_name(exc)] += 1
                    await asyncio.sleep(0.01)
                    continue
                times_ms.append((time.perf_counter() - t0) * 1000.0)
                await ws.close()

        started = time.monotonic()
        await asyncio.gather(*(loop_one() for _ in range(concurrency)))
        return {"times_ms": times_ms.tobytes(), "elapsed": time.monotonic() - started, "errors": dict(errors)}

    async def _close(self, streams: list[_Stream]) -> None:
        self.closing.update(streams)
        sem = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def close_one(stream: _Stream) -> None:
            async with sem:
                self._forget(stream)
                try:
                    await asyncio.wait_for(stream.ws.close(), 5.0)
                except (TimeoutError, ConnectionError):
                    self.errors["close_timeout"] += 1
                if stream.reader is not None:
                    stream.reader.cancel()

        await asyncio.gather(*(close_one(s) for s in streams))
        self.closing.difference_update(streams)

    async def cmd_close_all(self) -> dict[str, Any]:
        """Close every open stream (close code 1000 from the client)."""
        await self._close([s for slot in self.slots for s in slot])
        return {"open": self.count}


def worker_main(conn: Connection, cpu: int | None) -> None:
    """Entry point of a generator process (multiprocessing target)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    raise_nofile()
    uvloop.run(LoadWorker().run(conn))
