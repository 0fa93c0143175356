"""Load generator worker: one process, one uvloop event loop, many standard streams.

The parent (``bench.run``) drives each worker over a pipe with small commands (open N streams, measure,
handshake burst, close). Every stream sends a stamped 1,600-byte binary frame 20 times a second; the upstream
echoes the stamp of every 5th frame in a text frame, and the worker records the round trip on arrival. One
ticker per process paces all its streams in 10 slots per 50 ms, and the streams speak the wire format directly
(bench.ws), so the generator's own cost per frame stays a fraction of the relay's.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench.upstream import raise_nofile
from bench.wire import FRAMES_PER_SECOND
from bench.ws import ClientProtocol, HandshakeFailed, upgrade_request

SLOTS = 10
OPEN_CONCURRENCY = 64
HANDSHAKE_TIMEOUT = 15.0


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, HandshakeFailed):
        return f"http_{exc.status}"
    return type(exc).__name__


class LoadWorker:
    """The streams of one generator process and the commands that drive them."""

    def __init__(self) -> None:
        self.slots: list[list[ClientProtocol]] = [[] for _ in range(SLOTS)]
        self.count = 0
        self.recording = False
        self.closing: set[ClientProtocol] = set()
        self.errors: Counter[str] = Counter()
        self._reset()

    def _reset(self) -> None:
        self.rtts_us = array("d")
        self.lateness_ms = array("d")
        self.sent = 0
        self.received = 0
        self.dropped_ticks = 0
        self.max_write_buffer = 0
        self.errors.clear()

    async def run(self, conn: Connection) -> None:
        """Serve commands from the parent until ``quit``; replies are plain dicts."""
        loop = asyncio.get_running_loop()
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
            sent = 0
            for stream in self.slots[k % SLOTS]:
                if stream.is_open:
                    stream.send_audio(time.monotonic_ns())
                    sent += 1
            k += 1
            if self.recording:
                self.sent += sent
                if k % SLOTS == 0 and self.slots[0]:
                    buffered = max(s.transport.get_write_buffer_size() for s in self.slots[0] if s.transport)
                    self.max_write_buffer = max(self.max_write_buffer, buffered)

    def _echo(self, stamp_ns: int) -> None:
        if self.recording:
            self.rtts_us.append((time.monotonic_ns() - stamp_ns) / 1000.0)
            self.received += 1

    async def _connect(self, url: str, headers: dict[str, str]) -> ClientProtocol:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        request, accept = upgrade_request(path, parts.netloc, headers)
        loop = asyncio.get_running_loop()
        _transport, proto = await loop.create_connection(
            lambda: ClientProtocol(request, accept, self._echo), parts.hostname, parts.port
        )
        await asyncio.wait_for(proto.upgraded, HANDSHAKE_TIMEOUT)
        return proto

    def _on_closed(self, stream: ClientProtocol) -> None:
        if stream not in self.closing and self._forget(stream):
            code = stream.closed.result() if not stream.closed.cancelled() else None
            self.errors[f"closed_{code}"] += 1

    def _forget(self, stream: ClientProtocol) -> bool:
        for slot in self.slots:
            if stream in slot:
                slot.remove(stream)
                self.count -= 1
                return True
        return False

    async def _open(self, url: str, headers: dict[str, str]) -> None:
        try:
            stream = await self._connect(url, headers)
        except Exception as exc:
            self.errors[_error_name(exc)] += 1
            return
        min(self.slots, key=len).append(stream)
        self.count += 1
        stream.closed.add_done_callback(lambda _f: self._on_closed(stream))

    async def cmd_target(self, url: str, headers: dict[str, str], n: int, rate: float) -> dict[str, Any]:
        """Open streams (at most ``rate`` per second) or close some until ``n`` are open."""
        self.errors.clear()
        if self.count > n:
            await self._close([s for slot in self.slots for s in slot][n:])
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

    async def cmd_measure(self, seconds: float, excess: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record round trips, frames and ticker lateness for ``seconds``; with ``excess`` (``url``, ``headers``,
        ``n``, ``rate``), meanwhile try to open ``n`` more sessions, which an admission limit should refuse."""
        self._reset()
        self.recording = True
        attempts = asyncio.create_task(self._excess(**excess)) if excess else None
        await asyncio.sleep(seconds)
        extra = await attempts if attempts else None
        self.recording = False
        return {
            "excess": extra,
            "open": self.count,
            "sent": self.sent,
            "received": self.received,
            "dropped_ticks": self.dropped_ticks,
            "max_write_buffer": self.max_write_buffer,
            "rtts_us": self.rtts_us.tobytes(),
            "lateness_ms": self.lateness_ms.tobytes(),
            "errors": dict(self.errors),
        }

    async def _excess(self, url: str, headers: dict[str, str], n: int, rate: float) -> dict[str, Any]:
        """Open ``n`` sessions at ``rate`` per second and time each answer (TCP connect to the status line); a session
        admitted (101) is closed at once: it is only counted."""
        refused_ms = array("d")
        outcome: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def attempt() -> None:
            t0 = time.perf_counter()
            try:
                stream = await self._connect(url, headers)
            except HandshakeFailed as exc:
                if exc.status == 503:
                    refused_ms.append((time.perf_counter() - t0) * 1000.0)
                outcome[_error_name(exc)] += 1
                outcome["gateway_overloaded"] += b"gateway_overloaded" in exc.body
                return
            except Exception as exc:
                outcome[_error_name(exc)] += 1
                return
            outcome["admitted"] += 1
            try:
                await stream.close()
            except TimeoutError:
                outcome["close_timeout"] += 1

        tasks = []
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(attempt()))
        await asyncio.gather(*tasks)
        return {"attempts": n, "refused_ms": refused_ms.tobytes(), "outcome": dict(outcome)}

    async def cmd_handshake(
        self, url: str, headers: dict[str, str], seconds: float, concurrency: int
    ) -> dict[str, Any]:
        """Open and close sessions back to back from ``concurrency`` tasks; time each opening (TCP + upgrade)."""
        times_ms = array("d")
        errors: Counter[str] = Counter()
        deadline = time.monotonic() + seconds

        async def loop_one() -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    stream = await self._connect(url, headers)
                except Exception as exc:
                    errors[_error_name(exc)] += 1
                    await asyncio.sleep(0.01)
                    continue
                times_ms.append((time.perf_counter() - t0) * 1000.0)
                try:
                    await stream.close()
                except TimeoutError:
                    errors["close_timeout"] += 1

        started = time.monotonic()
        await asyncio.gather(*(loop_one() for _ in range(concurrency)))
        return {"times_ms": times_ms.tobytes(), "elapsed": time.monotonic() - started, "errors": dict(errors)}

    async def _close(self, streams: list[ClientProtocol]) -> None:
        self.closing.update(streams)
        sem = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def close_one(stream: ClientProtocol) -> None:
            async with sem:
                self._forget(stream)
                try:
                    await stream.close()
                except TimeoutError:
                    self.errors["close_timeout"] += 1

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
