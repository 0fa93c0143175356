"""The passthrough relay: frame bytes forwarded unchanged both ways, only headers read (docs/architecture.md).

A client's frames arrive masked and are already valid client-to-server frames; a provider's frames are unmasked
server frames. So nothing is re-framed: each hop is a :class:`~sttgate.gateway.framesocket.FrameSocket` whose scanner
validates every header before any byte of its frame moves, and the bytes go into the other hop's transport as they
came. What the relay reads:

- client binary frames: their length, from the header (the meter; a frame that opens a prepaid cycle no hold covers,
  docs/billing.md#holds, waits with the client's reading paused until :meth:`LiveSession.pay` paid it, and is not
  forwarded if it cannot be paid);
- client text frames: whole and unmasked (a meter that reads text, e.g. ElevenLabs ``input_audio_chunk``, and whether
  the client's last message was the provider's end message), then forwarded as they came;
- provider frames: binary by length, text whole (the first message's in-band auth error, the graceful end's
  acknowledgement, the provider's own figures in its last message);
- control frames: answered per hop by the hop itself, never forwarded; close frames and protocol errors end a
  direction with a verdict, exactly as :mod:`sttgate.gateway.relay`'s loops do, and
  :func:`sttgate.gateway.relay.conclude` performs the same close decision (:func:`sttgate.core.closing.decide`).

After a direction's verdict nothing more of the client is forwarded; the provider's frames keep reaching a client
that is there (its final transcript during a graceful end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sttgate.core import closecodes
from sttgate.core.frames import Event, Opcode, ScanEvent, encode_frame
from sttgate.core.outcomes import Outcome
from sttgate.core.session import State
from sttgate.gateway.framesocket import FrameSocket
from sttgate.gateway.live import ChargeFailed, LiveSession, UnmeterableFrame
from sttgate.gateway.relay import Verdict, conclude
from sttgate.gateway.upstream import DATA, TEXT, End, FrameKind

_OPEN = State.OPEN
_DATA = Event.DATA
_HEADER = Event.HEADER
_TEXT = Event.TEXT
_BINARY = Opcode.BINARY


def _write(target: FrameSocket, out: list[Any]) -> None:
    transport = target.transport
    if transport is not None and not target.close_written and not transport.is_closing():
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)


class _Direction:
    """One direction's verdict: set once, by whatever ends it first."""

    def __init__(self) -> None:
        self.verdict: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()

    def decide(self, outcome: Outcome, code: int, reason: str) -> None:
        if not self.verdict.done():
            self.verdict.set_result((outcome, code, reason))


class ClientToProvider(_Direction):
    """The client hop's frames: metered, charged, forwarded unchanged into the provider's transport."""

    def __init__(self, client: FrameSocket, upstream: FrameSocket, live: LiveSession) -> None:
        super().__init__()
        self.client = client
        self.upstream = upstream
        self.live = live
        self._binary = False  # the data message in progress is binary
        self._dropping = False  # the frame in progress is not forwarded
        self._continuing = False  # a forwarded fragmented message is in progress
        self._held: list[ScanEvent] | None = None  # events waiting while a charge is in flight
        self._pending: tuple[int, tuple[bytes, bytes] | None] = (0, None)  # the frame being paid for: size, text
        self._paying: asyncio.Future[None] | None = None
        self._stopped = False  # a verdict was reached: nothing more of the client goes out
        # Looked up once, read for every frame: the client hop's whole-frame test and the binary meter (None when
        # binary frames are not metered).
        self._whole = client.scanner.whole
        self._meter = live.meter_size

    def events(self, events: list[ScanEvent]) -> None:
        if self._held is not None:
            self._held.extend(events)
            return
        self._run(events, 0)

    def whole(self, data: bytes) -> bool:
        """One whole binary frame while the session is open and nothing waits: metered from its length and forwarded
        as it came; anything else (a text frame, a charge in flight, an ending session) goes through :meth:`events`.
        Every read of the client's comes here first: the session's state is read from attributes, and the meter and
        the write are the only calls unless a cycle opens."""
        if self._held is not None or self._stopped:
            return False
        header = self._whole(data)
        if not header:
            return False
        live = self.live
        if live.session.state is not _OPEN:
            return False
        size = len(data) - header
        meter = self._meter
        if meter is not None:
            try:
                opened = meter(size)
                admitted = not opened or live.opened(opened)
            except UnmeterableFrame:
                self._stop(Outcome.UNMETERABLE, *closecodes.UNMETERABLE_AUDIO)
                return True
            if not admitted:
                self._hold([(_DATA, data, True)], size, None)
                return True
        live.frames_up += 1
        live.bytes_up += size
        upstream = self.upstream
        transport = upstream.transport
        if transport is not None and not upstream.close_written and not transport.is_closing():
            transport.write(data)
        if upstream.own:
            upstream.boundary()
        return True

    def run(self, data: bytes, frames: list[tuple[int, int]]) -> bool:
        """Several whole binary frames in one read (a client's frames are masked, so none is text): each metered in
        order; the read goes out with one write when all are admitted. A frame that opens a prepaid cycle waits with
        the rest of the read (scanned into events) while what came before it is forwarded."""
        if self._held is not None or self._stopped or self.live.session.state is not _OPEN:
            return False
        live = self.live
        upstream = self.upstream
        done = 0  # the bytes of the frames admitted so far
        for start, end in frames:
            size = end - start
            try:
                admitted = live.admit_size(size)
            except UnmeterableFrame:
                if done:
                    _write(upstream, [data[:done]])
                self._stop(Outcome.UNMETERABLE, *closecodes.UNMETERABLE_AUDIO)
                return True
            if not admitted:
                if done:
                    _write(upstream, [data[:done]])
                held: list[ScanEvent] = [(_DATA, data[done:end], True)]
                if end < len(data):
                    held += self.client.scanner.feed(data[end:])
                self._hold(held, size, None)
                return True
            live.frames_up += 1
            live.bytes_up += size
            done = end
        _write(upstream, [data])
        if upstream.own:
            upstream.boundary()
        return True

    def _stop(self, outcome: Outcome, code: int, reason: str) -> None:
        self._stopped = True
        self.decide(outcome, code, reason)

    def _run(self, events: list[ScanEvent], i: int) -> None:
        live = self.live
        session = live.session
        upstream = self.upstream
        out: list[Any] = []
        n = len(events)
        while i < n:
            kind, a, b = events[i]
            i += 1
            if kind is _DATA:
                if not self._dropping:
                    out.append(a)
                if b:  # a frame boundary: the gateway's own frames waiting for one go now
                    self._dropping = False
                    if upstream.own:
                        _write(upstream, out)
                        out = []
                        upstream.boundary()
                continue
            if kind is _HEADER:
                opcode = a.opcode
                if self._stopped or (session.state is not _OPEN and not (opcode == 0 and self._continuing)):
                    # The session is ending: nothing more goes to the provider, nothing more is metered.
                    self._dropping = True
                    continue
                self._continuing = not a.fin
                if opcode:
                    self._binary = opcode == _BINARY
                if self._binary:
                    try:
                        admitted = live.admit_size(a.length)
                    except UnmeterableFrame:
                        self._dropping = True
                        self._stop(Outcome.UNMETERABLE, *closecodes.UNMETERABLE_AUDIO)
                        continue
                    if not admitted:
                        if out:
                            _write(upstream, out)
                        self._hold(events[i:], a.length, None)
                        return
                live.frames_up += 1
                live.bytes_up += a.length
                continue
            if kind is _TEXT:
                if self._stopped or session.state is not _OPEN:
                    if upstream.own:
                        _write(upstream, out)
                        out = []
                        upstream.boundary()
                    continue
                try:
                    admitted = live.admit(a, TEXT)
                except UnmeterableFrame:
                    self._stop(Outcome.UNMETERABLE, *closecodes.UNMETERABLE_AUDIO)
                    continue
                if not admitted:
                    if out:
                        _write(upstream, out)
                    self._hold(events[i:], len(a), (a, b))
                    return
                live.last_text = a  # read only at the end: was the last one sent the provider's end message?
                live.frames_up += 1
                live.bytes_up += len(a)
                out.append(b)
                if upstream.own:
                    _write(upstream, out)
                    out = []
                    upstream.boundary()
                continue
            # A control frame, the client's close, a protocol error: per hop (the close/error end this direction).
            if out:
                _write(upstream, out)
                out = []
            self.client.control(kind, a, b)
        if out:
            _write(upstream, out)
        if upstream.own and self.client.scanner.at_boundary:
            upstream.boundary()

    def _hold(self, rest: list[ScanEvent], size: int, text: tuple[bytes, bytes] | None) -> None:
        """The frame just read opened prepaid cycles: pause the client and debit them before it goes anywhere."""
        self._held = rest
        self._pending = (size, text)
        self.client.pause_reading()
        self._paying = asyncio.ensure_future(self._pay())

    async def _pay(self) -> None:
        live = self.live
        try:
            try:
                paid = await live.pay()
            except ChargeFailed:
                paid = None
            held, self._held = self._held or [], None
            size, text = self._pending
            if paid is None or not paid:
                close = closecodes.BILLING_UNAVAILABLE if paid is None else live.cut_off_close
                self._dropping = text is None  # the rest of the unpaid binary frame is not forwarded
                self._stop(Outcome.CUT_OFF, *close)
            else:
                live.frames_up += 1
                live.bytes_up += size
                if text is not None:
                    live.last_text = text[0]
                    _write(self.upstream, [text[1]])
            self._run(held, 0)
        finally:
            self.client.resume_reading()

    def ended(self, end: End) -> None:
        kind, code, reason = end
        if kind is FrameKind.CLOSE:
            self.decide(Outcome.CLIENT_CLOSE, code, reason)
        elif kind is FrameKind.ERROR:
            self.decide(Outcome.CLIENT_ERROR, code, "")
        else:
            self.decide(Outcome.CLIENT_LOST, closecodes.ABNORMAL, "")
        self._stopped = True


class ProviderToClient(_Direction):
    """The provider hop's frames: accounted on the session, forwarded unchanged into the client's transport."""

    def __init__(self, client: FrameSocket, upstream: FrameSocket, live: LiveSession) -> None:
        super().__init__()
        self.client = client
        self.upstream = upstream
        self.live = live
        self._whole = upstream.scanner.whole

    def whole(self, data: bytes) -> bool:
        """One whole binary or text frame: accounted (a text frame read whole) and forwarded as it came."""
        header = self._whole(data)
        if not header:
            return False
        live = self.live
        if data[0] == 0x82:
            live.received_binary(len(data) - header)
        else:
            live.received((FrameKind.TEXT, data[header:], None))
        client = self.client
        transport = client.transport
        if transport is not None and not client.close_written and not transport.is_closing():
            transport.write(data)
        if client.own:
            client.boundary()
        return True

    def run(self, data: bytes, frames: list[tuple[int, int]]) -> bool:
        """Several whole frames in one read: each accounted in order, then the read forwarded with one write."""
        live = self.live
        done = 0
        for start, end in frames:
            if data[done] == 0x82:
                live.received_binary(end - start)
            else:
                live.received((FrameKind.TEXT, data[start:end], None))
            done = end
        _write(self.client, [data])
        if self.client.own:
            self.client.boundary()
        return True

    def events(self, events: list[ScanEvent]) -> None:
        live = self.live
        client = self.client
        out: list[Any] = []
        for kind, a, b in events:
            if kind is _DATA:
                out.append(a)
                if b and client.own:
                    _write(client, out)
                    out = []
                    client.boundary()
            elif kind is _HEADER:
                live.received_binary(a.length)  # text frames are surfaced whole: a header here is binary
            elif kind is _TEXT:
                live.received((FrameKind.TEXT, a, None))
                out.append(b)
                if client.own:
                    _write(client, out)
                    out = []
                    client.boundary()
            else:
                if out:
                    _write(client, out)
                    out = []
                self.upstream.control(kind, a, b)
        if out:
            _write(client, out)
        if client.own and self.upstream.scanner.at_boundary:
            client.boundary()

    def replay(self, frames: list[tuple[int, Any, Any]]) -> None:
        """Messages the provider hop received before the relay started (read whole, in link mode): account and
        forward them as whole frames, then its end if it ended meanwhile."""
        live = self.live
        for frame in frames:
            kind = frame[0]
            if kind in DATA:
                live.received(frame)
                _write(self.client, [encode_frame(int(kind), frame[1])])
            else:
                self.ended(self.upstream.ended(frame))

    def ended(self, end: End) -> None:
        kind, code, reason = end
        self.live.received((kind, code, reason))
        if kind is FrameKind.CLOSE:
            self.decide(Outcome.UPSTREAM_CLOSE, code, reason)
        elif kind is FrameKind.ERROR:
            self.decide(Outcome.UPSTREAM_ERROR, code, "")
        else:
            self.decide(Outcome.UPSTREAM_LOST, closecodes.ABNORMAL, "")


class Relay:
    """Both hops of one session wired for forwarding. Made synchronously right after the client's 101 (before the
    loop can deliver a byte of the client's to anyone else); :meth:`run` then waits for the end."""

    def __init__(self, client: FrameSocket, live: LiveSession, early: bytes = b"") -> None:
        """``client``: the hop whose transport was just handed over; ``early``: its bytes the HTTP layer had already
        read. The provider's messages that arrived before now are forwarded first."""
        upstream = live.upstream
        assert isinstance(upstream, FrameSocket)
        self.client = client
        self.upstream = upstream
        self.live = live
        self.inbound = ClientToProvider(client, upstream, live)
        self.outbound = ProviderToClient(client, upstream, live)
        live.attach_reader()
        client.forwarder = upstream
        upstream.forwarder = client
        client.sink = self.inbound
        self.outbound.replay(upstream.take_over(self.outbound))
        client.feed(early)

    def when_ending(self, start: Callable[[], None]) -> None:
        """Call ``start`` (once, from the loop) when a direction reaches its verdict or a close is requested: the
        moment :meth:`run` has something to do. Until then nothing waits for the relay's end (a task waiting in
        :func:`~sttgate.gateway.relay.conclude` costs about 2.5 kB per session: the task, its coroutines, asyncio.wait's
        future and callbacks)."""
        futures: tuple[asyncio.Future[Any], ...] = (
            self.inbound.verdict,
            self.outbound.verdict,
            self.live.close_requested,
        )

        def wake(_: asyncio.Future[Any]) -> None:
            for future in futures:
                future.remove_done_callback(wake)
            start()

        for future in futures:
            future.add_done_callback(wake)

    async def run(self) -> None:
        """Relay until both hops are closed; the outcome is recorded on the session."""
        try:
            await conclude(self.client, self.live, self.inbound.verdict, self.outbound.verdict)
        finally:
            self.client.release()
            self.upstream.release()
