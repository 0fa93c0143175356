"""One WebSocket hop on a raw asyncio transport: the passthrough data plane's socket (docs/architecture.md).

:class:`FrameSocket` is an ``asyncio.Protocol`` that reads its hop with the sans-I/O
:class:`~sttgate.core.frames.FrameScanner` and is a :class:`~sttgate.gateway.upstream.Link` for everything that is not
the per-frame path: sending a frame of the gateway's own (a provider's end message, pull audio), receiving whole
messages (pull, or a provider session ended before its relay started), closing with a code.

Per hop, whatever the mode: pings are answered with a pong and pongs are consumed (never forwarded); a heartbeat ping
goes out when the peer was silent for ``heartbeat`` seconds, and a peer silent for another ``heartbeat`` is dropped;
the peer's close frame, a protocol error (1002, 1009) or a lost connection ends the hop.

In a relay (:mod:`sttgate.gateway.passthrough`) a :class:`Sink` takes the hop's frames instead of the receive queue
and forwards their bytes unchanged into the other hop's transport; the other hop then is this transport's
``forwarder``, and a frame of the gateway's own (pong, close, end message) goes in only where the forwarded stream is at
a frame boundary. Backpressure: a transport whose write buffer is above its high-water mark pauses reading on the side
that fills it (the forwarder, or a sender waiting in :meth:`FrameSocket.send`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, cast

from sttgate.core import closecodes
from sttgate.core.frames import (
    Event,
    FrameScanner,
    Opcode,
    ScanEvent,
    Unmask,
    close_payload,
    encode_frame,
    xor_unmask,
)
from sttgate.gateway.upstream import End, Frame, FrameKind

# Above this many bytes waiting in a transport's write buffer, whoever fills it is paused (bounded memory per hop).
HIGH_WATER = 256 * 1024


def _fast_unmask() -> Unmask:
    """aiohttp's C mask helper when this aiohttp has it with the expected behaviour (it is not public API, so it is
    checked against the pure fallback once); else the fallback (~50x slower on a 4 KB text frame)."""
    try:
        from aiohttp._websocket.helpers import websocket_mask
    except ImportError:  # pragma: no cover - depends on the aiohttp build
        return xor_unmask
    sample = bytearray(range(7, 250))
    expected = bytearray(sample)
    xor_unmask(b"\x01\x80\xfe\x33", expected)
    try:
        websocket_mask(b"\x01\x80\xfe\x33", sample)
    except Exception:  # pragma: no cover
        return xor_unmask
    return websocket_mask if sample == expected else xor_unmask


UNMASK: Unmask = _fast_unmask()


class Sink(Protocol):
    """Takes a relayed hop's scan events (the relay's direction from this hop to the other)."""

    def events(self, events: list[ScanEvent]) -> None: ...

    def whole(self, data: bytes) -> bool:
        """Take ``data`` if it is exactly one whole, valid, unfragmented frame the relay may forward as it is (the
        hop's :attr:`FrameScanner.whole` says so) and nothing waits; else return False (nothing done) to have it
        scanned. The relay's usual read, without building events: called first for every read of a relayed hop."""
        ...

    def run(self, data: bytes, frames: list[tuple[int, int]]) -> bool:
        """:meth:`whole` for a read of several whole frames (:meth:`FrameScanner.run`: where each payload starts and
        ends); False (nothing done) to have it scanned into :meth:`events` instead."""
        ...

    def ended(self, end: End) -> None:
        """The hop ended (its close frame, a protocol error, a lost connection); called once."""
        ...


class _Heartbeat:
    """One timer per event loop and period for every hop with that heartbeat: one wake-up per period checks them all,
    instead of a timer per hop (about 0.5 kB and a libuv handle each, re-armed every period). Registered only while
    a hop has sockets; the timer stops when the last one leaves."""

    _running: ClassVar[dict[tuple[int, float], _Heartbeat]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self.period = period
        self.sockets: set[FrameSocket] = set()
        self.timer = loop.call_later(period, self.tick)

    @classmethod
    def join(cls, sock: FrameSocket, period: float) -> _Heartbeat:
        loop = asyncio.get_running_loop()
        key = (id(loop), period)
        beat = cls._running.get(key)
        if beat is None:
            beat = cls._running[key] = cls(loop, period)
        beat.sockets.add(sock)
        return beat

    def tick(self) -> None:
        for sock in list(self.sockets):
            sock._tick()
        if self.sockets:
            self.timer = self.loop.call_later(self.period, self.tick)
        else:
            del self._running[(id(self.loop), self.period)]


class FrameSocket(asyncio.Protocol):
    """One hop. ``client_side``: this end is the WebSocket client (the provider hop: frames sent masked, received
    unmasked); else the server end (the client hop: frames received masked, sent unmasked)."""

    def __init__(
        self,
        *,
        client_side: bool,
        max_size: int,
        close_timeout: float,
        heartbeat: float | None = None,
        unmask: Unmask = UNMASK,
    ) -> None:
        self.client_side = client_side
        self.scanner = FrameScanner(masked=not client_side, max_size=max_size, surface_text=True, unmask=unmask)
        self._unmask = unmask
        self._close_timeout = close_timeout
        self._heartbeat = heartbeat
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        # The hop whose frames are forwarded into this transport (relay mode): its scanner says where a boundary is.
        self.forwarder: FrameSocket | None = None
        # Frames of the gateway's own waiting for a frame boundary of the forwarded stream (at most a pong, a close and
        # a few end frames).
        self.own: list[tuple[bytes, bool, bool]] = []  # (frame, is a data frame, is a close frame)
        # Our close frame is on the wire: nothing more may follow it (the relay stops forwarding into this hop).
        self.close_written = False
        # Link mode: whole messages for receive(), at most one read's worth (reading pauses while any wait). A list: a
        # deque costs 760 bytes per hop even empty, and relay mode never uses it.
        self._queue: list[Frame] = []
        self._waiter: asyncio.Future[None] | None = None
        self._message = bytearray()
        self._message_kind = 0
        self._message_fin = True
        self._skip = 0
        self._queue_paused = False
        self.end: End | None = None  # how the hop ended
        self._close_sent = False  # our close frame is written (or waits for a frame boundary)
        self._closing = False  # close() was called
        self._lost = False
        # close() waiting for the peer's close frame or the connection's end: made only then (two futures per hop
        # for the whole session otherwise).
        self._change: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._write_paused = False
        # Why reading is paused: backpressure from the other transport, a full receive queue, a charge in flight.
        self._read_pauses = 0
        self._heard = True
        self._ping_out = False
        self._beat: _Heartbeat | None = None

    # -- transport callbacks -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = stream = cast(asyncio.Transport, transport)
        stream.set_write_buffer_limits(high=HIGH_WATER)
        if self._heartbeat:
            self._beat = _Heartbeat.join(self, self._heartbeat)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        sink = self.sink
        if sink is not None and sink.whole(data):
            return  # the relay's usual read: one whole frame, taken as it came
        scanner = self.scanner
        if scanner.done:
            return  # after the peer's close or an error: the rest is not read (lingering until the peer closes)
        if sink is None:
            self._link_events(scanner.feed(data))
            return
        frames = scanner.run(data)
        if frames and sink.run(data, frames):
            return
        sink.events(scanner.feed(data))

    def eof_received(self) -> bool:
        # A half-closed peer sends nothing more: without its close frame that is a lost connection. Keep the
        # transport open for writing; what is owed (a close echo) is written, then the transport is closed.
        if self.end is None:
            self._ended((FrameKind.LOST, closecodes.ABNORMAL, ""))
        if self._close_sent:
            self._shut()
        return True  # keep writing what is owed (a close echo); the transport is closed after it

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._stop_heartbeat()
        if self.end is None:
            self._ended((FrameKind.LOST, closecodes.ABNORMAL, ""))
        self._wake_closer()
        self._wake_writer()
        self._wake_reader()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.forwarder is not None:
            self.forwarder.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        if self.forwarder is not None:
            self.forwarder.resume_reading()

    # -- reading ----------------------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._read_pauses += 1
        if self._read_pauses == 1 and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self._read_pauses -= 1
        if self._read_pauses == 0 and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def feed(self, data: bytes) -> None:
        """Bytes of this hop that arrived before the socket was handed over (read by the HTTP layer)."""
        if data:
            self.data_received(data)

    def control(self, kind: Event, a: Any, b: Any) -> None:
        """A control event of this hop: answer pings, consume pongs, end the hop on a close frame or an error."""
        if kind is Event.CONTROL:
            if a == Opcode.PING and not self._close_sent:
                self.write_own(self._frame(Opcode.PING + 1, b))
        elif kind is Event.CLOSE:
            self._ended((FrameKind.CLOSE, a, b))
        elif kind is Event.ERROR:
            # The peer broke the protocol: it is told at once (as any WebSocket endpoint does), before whatever the
            # session's end still does; the later close() completes this close.
            self._close_frame(a, closecodes.MESSAGE_TOO_BIG.reason if a == closecodes.MESSAGE_TOO_BIG.code else "")
            self._ended((FrameKind.ERROR, a, b))

    def _ended(self, end: End) -> None:
        if self.end is not None:
            return
        self.end = end
        self._wake_closer()
        if self.sink is not None:
            self.sink.ended(end)
        else:
            self._queue.append((end[0], end[1], end[2]))
            self._wake_reader()

    def _link_events(self, events: list[ScanEvent]) -> None:
        """Link mode (the provider hop outside a relay; its frames are never masked): whole messages for
        :meth:`receive`."""
        queue = self._queue
        message = self._message
        for kind, a, b in events:
            if kind is Event.DATA:
                message += a[self._skip :] if self._skip else a
                self._skip = 0
                if b and self._message_fin:
                    queue.append((self._message_kind, bytes(message), None))
                    message.clear()
            elif kind is Event.HEADER:
                if a.opcode:
                    self._message_kind = a.opcode
                self._message_fin = a.fin
                self._skip = len(a.raw)
            elif kind is Event.TEXT:
                queue.append((FrameKind.TEXT, a, None))
            else:
                self.control(kind, a, b)
        if queue:
            self._wake_reader()
            if not self._queue_paused:
                self._queue_paused = True
                self.pause_reading()

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Frame:
        """The next whole message ``(FrameKind.TEXT|BINARY, payload, None)``, or how the hop ended."""
        while not self._queue:
            if self.end is not None:
                return (self.end[0], self.end[1], self.end[2])
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._queue.pop(0)
        if not self._queue and self._queue_paused:
            self._queue_paused = False
            self.resume_reading()
        return frame

    def ended(self, frame: Frame) -> End:
        kind = frame[0]
        if kind == FrameKind.CLOSE:
            return FrameKind.CLOSE, frame[1], frame[2] or ""
        if kind == FrameKind.ERROR:
            return FrameKind.ERROR, frame[1], ""
        if kind == FrameKind.CLOSING:
            return FrameKind.CLOSING, 0, ""
        return FrameKind.LOST, closecodes.ABNORMAL, ""

    # -- writing ----------------------------------------------------------------------------------------------

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        return encode_frame(opcode, payload, mask=os.urandom(4) if self.client_side else None, unmask=self._unmask)

    def write_own(self, frame: bytes, *, data: bool = False, close: bool = False) -> None:
        """Write a frame of the gateway's own, in order with the others, where the forwarded stream is at a frame
        boundary (a data frame also outside a fragmented message): now if it is, else as soon as it is. Nothing is
        written after a close frame."""
        self.own.append((frame, data, close))
        self.boundary()

    def boundary(self) -> None:
        """Write the gateway's own frames that waited for a frame boundary of the forwarded stream, if it is at one."""
        own = self.own
        if not own:
            return
        transport = self.transport
        if transport is None or transport.is_closing() or self.close_written:
            own.clear()
            return
        forwarder = self.forwarder
        if forwarder is not None and not forwarder.scanner.at_boundary:
            return
        ready = []
        while own:
            frame, data, close = own[0]
            if data and forwarder is not None and forwarder.scanner.in_message:
                break
            own.pop(0)
            ready.append(frame)
            if close:
                self.close_written = True
                own.clear()
        if ready:
            transport.writelines(ready)

    def _wake_writer(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(self, data: bytes, kind: int) -> None:
        """Send a data frame of the gateway's own; waits while the transport's buffer is above its high-water mark."""
        transport = self.transport
        if self._close_sent or self._lost or transport is None or transport.is_closing():
            raise ConnectionResetError("the WebSocket is closed")
        self.write_own(self._frame(int(kind), data), data=True)
        while self._write_paused and not self._lost:
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None
        if self._lost:
            raise ConnectionResetError("the WebSocket connection was lost")

    # -- closing ----------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._close_sent or self._lost

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (at a frame boundary), wait (bounded) for the peer's, then close the connection; after a
        protocol error the rest of the peer's stream is not read: the close frame is followed by the end of the
        stream and the connection lingers until the peer closes (so the close frame is not lost to a reset)."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._close_frame(code, reason)
        lingering = self.end is not None and self.end[0] is FrameKind.ERROR
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                if lingering:
                    # The peer's stream is no longer read: end ours after the close frame and let the peer close,
                    # so that unread bytes of its do not turn our close into a reset that loses the close frame.
                    self._shut(eof=True)
                    await self._until(self._gone)
                else:
                    await self._until(self._peer_done)
        self._shut()
        if not self._lost:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    await self._until(self._gone)
        self.abort()

    def _peer_done(self) -> bool:
        """The peer's close frame came, or the connection ended."""
        return self._lost or (self.end is not None and self.end[0] is not FrameKind.ERROR)

    def _gone(self) -> bool:
        """The connection is closed."""
        return self._lost

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait (the caller bounds the time) until ``ready()``, checked again whenever the hop ends or its connection
        does."""
        while not ready():
            self._change = asyncio.get_running_loop().create_future()
            try:
                await self._change
            finally:
                self._change = None

    def _wake_closer(self) -> None:
        change = self._change
        if change is not None and not change.done():
            change.set_result(None)

    def _close_frame(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        self._stop_heartbeat()
        self.write_own(self._frame(Opcode.CLOSE, close_payload(code, reason)), close=True)

    def _shut(self, *, eof: bool = False) -> None:
        """No more bytes from this end: what is owed (the close frame) is flushed, then the connection is closed, or
        with ``eof`` only its sending half (TLS cannot: the connection closes)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.boundary()  # what is owed, if the forwarded stream allows (never inside a forwarded frame)
        self.own.clear()
        if eof and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
                return
        transport.close()

    def take_over(self, sink: Sink) -> list[Frame]:
        """Enter relay mode: ``sink`` gets this hop's frames from now on; returns the messages (and the end) that were
        received whole meanwhile."""
        frames = list(self._queue)
        self._queue.clear()
        self.sink = sink
        if self._queue_paused:
            self._queue_paused = False
            self.resume_reading()
        return frames

    def release(self) -> None:
        """The relay is over: a connection still open (a peer that vanished half-closed) is closed."""
        self._stop_heartbeat()
        transport = self.transport
        if transport is not None and not self._lost and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        """Drop the connection now (nothing more is written)."""
        if self.transport is not None and not self._lost:
            self.transport.abort()

    # -- heartbeat --------------------------------------------------------------------------------------------

    def _stop_heartbeat(self) -> None:
        if self._beat is not None:
            self._beat.sockets.discard(self)
            self._beat = None

    def _tick(self) -> None:
        """Once per heartbeat period (the shared :class:`_Heartbeat`): ping a peer silent since the last tick, drop
        one silent since the ping."""
        if self._lost or self._close_sent:
            self._stop_heartbeat()
            return
        if self._heard:
            self._heard = False
            self._ping_out = False
        elif self._ping_out:
            # Nothing heard for a whole heartbeat after a ping: the peer is gone.
            self.abort()
            return
        else:
            self._ping_out = True
            self.write_own(self._frame(Opcode.PING, b""))
