"""``LiveSession``: one open provider session, the API shared by push, pull and SDK routes.

A :class:`LiveSession` is one provider session opened by :func:`sttgate.gateway.opening.open_stream` (slot taken,
upstream connected). Whatever feeds it (the push relay, a pull task, a provider-shaped route) uses the same calls::

    live = await open_stream(app, principal, provider, forwarded, kind=SessionKind.PULL)  # raises Refusal
    live.accept()                                 # after the client's 101 (push), once the task is recorded (pull)
    try:
        reader = asyncio.create_task(deliver(live.messages()))  # str (text) / bytes (binary) until the provider ends
        for frame in frames:                      # provider.audio_frame(pcm) per 100 ms chunk
            if not await live.send_audio(frame):  # meter, charge, forward; False: the balance cannot pay (not sent)
                await live.finish(code=4002, reason="insufficient balance", closed_by=ClosedBy.GATEWAY)
                break
        else:
            await live.finish(code=1000, reason="source ended", closed_by=ClosedBy.CLIENT)  # graceful provider end
        await reader
    finally:
        await live.end()                          # totals, close code, closed_by to the database; idempotent

``finish`` sends the provider's end frames (unless the client's last text frame, ``last_text``, already was the
provider's end message) and waits (bounded) for its final transcript or its close. Call ``messages()`` before
``finish`` (e.g. ``it = live.messages()`` before starting the task that iterates it) and keep iterating meanwhile to
receive that transcript; if nobody reads (or the reader stops, :meth:`LiveSession.detach_reader`), ``finish`` drains
and drops it. ``end`` ends a provider session nobody finished gracefully too (docs/contract.md#graceful-provider-end).
``close_requested`` must be watched by whatever drives the session: the gateway sets it for an idle timeout, at the
session's time limit and at the end of a drain.

The decisions are the pure core's (:mod:`sttgate.core.session`, :mod:`sttgate.core.billing`,
:mod:`sttgate.core.closing`); this class performs them over an :class:`~sttgate.gateway.upstream.UpstreamLink` and
the store, and speaks only bytes and str.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sttgate.core import closecodes
from sttgate.core.billing import Action, Billing
from sttgate.core.closecodes import Close
from sttgate.core.closing import ABANDONED, provider_ended
from sttgate.core.idle import IdleWatch, session_time_limit
from sttgate.core.metering import Meter
from sttgate.core.money import CYCLE_SECONDS, format_usd
from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.core.prices import Basis, Priced
from sttgate.core.session import Reader, Session, State
from sttgate.gateway import tracing
from sttgate.gateway.upstream import BINARY, DATA, TEXT, Frame, FrameKind, UpstreamLink
from sttgate.store import SettleRequest
from sttgate.store.database import unavailable, utcnow

if TYPE_CHECKING:
    from sttgate.gateway.manager import SessionManager
    from sttgate.providers import Provider
    from sttgate.providers.base import ProviderFigures
    from sttgate.store import Principal

log = logging.getLogger("sttgate.gateway")

_ENDING = State.ENDING
# A cycle opens once the clock *exceeds* the previous one's end: wake just after it.
_CLOCK_STEP = 0.001


class ChargeFailed(RuntimeError):
    """The ledger could not debit a prepaid cycle (database error): the frame was not forwarded."""


class UnmeterableFrame(Exception):
    """The meter cannot read a client frame exactly as the provider will (docs/billing.md#strict-metering): the frame
    was not forwarded; whoever drives the session closes it with 1008 "unmeterable audio"."""


class LiveSession:
    """One open provider session: meter, charges, counters, and how it ended."""

    def __init__(
        self,
        manager: SessionManager,
        *,
        session_id: str,
        principal: Principal,
        provider: Provider,
        kind: SessionKind,
        forwarded: str,
        upstream: UpstreamLink,
        price: Priced | None = None,
        holds: int = 0,
    ) -> None:
        """``holds``: the cycles the slot's transaction held ahead (docs/billing.md#holds: one for a prepaid
        account)."""
        self.manager = manager
        self.id = session_id
        self.account_id = principal.account_id
        self.key_id = principal.key_id
        # The session's trace when tracing is on (docs/operations.md#tracing): a cycle event per charged batch; the
        # session manager ends it with the close event.
        self.trace = tracing.take()
        self.provider = provider
        self.provider_name = provider.name
        self.kind = kind
        self.forwarded = forwarded
        self.upstream = upstream
        self.meter = meter = provider.new_meter(forwarded) if manager.settings.metering_enabled else Meter()
        # Bound methods looked up once; None = this frame kind is never metered (no call on the frame path).
        self._meter_binary = meter.binary if type(meter).binary is not Meter.binary else None
        # The passthrough relay meters binary frames from their headers (the payload is never assembled).
        self.meter_size = meter.binary_size if type(meter).binary_size is not Meter.binary_size else None
        # Only meters that read text frames get them decoded; text of binary-audio providers is never decoded.
        self._meter_text = meter.text if type(meter).text is not Meter.text else None
        # The price fixed at the handshake (docs/billing.md#the-price-book); the default model's when none was given.
        self.price = price
        self.price_nanos = manager.price_nanos(provider.name) if price is None else price.cycle_price_nanos
        self.billing = Billing(
            meter,
            prepaid=principal.balance_nanos is not None,
            price_nanos=self.price_nanos,
            session_basis=price is not None and price.basis is Basis.SESSION,
            holds=holds,
        )
        # The background ledger write (cycles opened from holds, the next hold), at most one at a time.
        self._ledger: asyncio.Task[None] | None = None
        # The session basis's clock (docs/billing.md#session-basis), started once the session is accepted.
        self._clock: asyncio.Task[None] | None = None
        self.session = Session()
        self.started = time.monotonic()
        self._clock_origin = asyncio.get_running_loop().time()  # the provider's 101, on the loop's clock
        # Built the moment the provider's 101 arrived: the session's start in usage (docs/contract.md#usage).
        self.opened_at = utcnow()
        self.idle = IdleWatch(manager.settings.idle_timeout_seconds, self.started)
        # The client's last text frame (kept by the relay, read only at the end): was it the provider's end message?
        self.last_text: bytes | None = None
        # The provider's last data frame: read once, at the end, for the provider's own figures (reconciliation).
        self.last_down: bytes = b""
        # Plain counters on the frame path; metrics pick up the difference periodically.
        self.frames_up = 0
        self.bytes_up = 0
        self.frames_down = 0
        self.bytes_down = 0
        self.reported = [0, 0, 0, 0]
        self.close_requested: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        # Wake-ups for whoever waits; the state itself is in ``self.session``.
        self._upstream_done = asyncio.Event()
        # A graceful end waiting for the provider's last message or for the relay to stop reading: made only then (two
        # events and two tasks per session before), resolved by whichever comes first.
        self._end_wake: asyncio.Future[None] | None = None
        self._ended = False
        self._time_limit: asyncio.TimerHandle | None = None
        if kind == SessionKind.WEBSOCKET:
            limit = session_time_limit(manager.settings.max_session_seconds, principal.max_session_seconds)
            self._time_limit = asyncio.get_running_loop().call_later(
                limit, self.request_close, *closecodes.SESSION_TIME_LIMIT
            )

    def accept(self) -> None:
        """The client got its 101 (or the pull task is recorded): from now on this is a session in usage, started at
        the provider's 101. Until then its row only holds the slot, and a handshake that fails is no session.

        Nothing is written here, on the handshake path: the session manager writes the acceptances of each ledger tick
        in one statement, a session's first prepaid charge marks it too, and its end writes it at the latest
        (docs/contract.md#usage)."""
        self.manager.accepted(self)
        if self.billing.session_basis and self._clock is None:
            self._clock = asyncio.create_task(self._run_clock())

    async def _run_clock(self) -> None:
        """Session basis: charge each cycle ahead, when the time since the provider's 101 first enters it (cycle 1
        from the handshake's hold); a cycle the balance cannot pay closes the session (4002), a failing ledger too
        (1011). Audio opens no cycles. The clock is not the frame path: it awaits its own ledger writes."""
        billing = self.billing
        loop = asyncio.get_running_loop()
        while not billing.cut_off:
            opened = billing.due_by_clock(loop.time() - self._clock_origin)
            action = billing.clock_opened(opened) if opened else Action.FORWARD
            if action is Action.CUT_OFF:
                self.request_close(*closecodes.BUDGET_EXCEEDED)
                return
            if action is Action.RECORD:
                await self._write_ahead()
            elif action is Action.CHARGE:
                try:
                    paid = await self._settle()
                except ChargeFailed:
                    self.request_close(*closecodes.BILLING_UNAVAILABLE)
                    return
                if not paid:
                    self.request_close(*closecodes.INSUFFICIENT_BALANCE)
                    return
            if opened:
                self._billed(opened, opened * billing.price_nanos)
            # The next cycle opens once the clock first passes the end of the last one charged.
            next_at = self._clock_origin + billing.cycles * CYCLE_SECONDS
            await asyncio.sleep(max(0.0, next_at - loop.time()) + _CLOCK_STEP)

    # -- outcome -------------------------------------------------------------------------------------------------

    def record(self, code: int | None, reason: str, closed_by: ClosedBy) -> None:
        """Remember how the session ended; the first decision wins."""
        self.session.record(code, reason, ClosedBy(closed_by))

    @property
    def close_code(self) -> int | None:
        closed = self.session.closed
        return None if closed is None else closed.code

    @property
    def close_reason(self) -> str:
        closed = self.session.closed
        return "" if closed is None else closed.reason

    @property
    def closed_by(self) -> ClosedBy | None:
        closed = self.session.closed
        return None if closed is None else closed.closed_by

    def request_close(self, code: int, reason: str) -> None:
        """Ask whatever drives the session (relay, pull task) to close it with a gateway code."""
        if not self.close_requested.done():
            self.close_requested.set_result((code, reason))

    @property
    def audio_activity(self) -> float:
        """What the idle rule watches: the metered audio (docs/contract.md#idle-and-time-limit); with metering off
        (benchmarks only) nothing is metered, so the frames sent stand for it."""
        return self.meter.audio_seconds if self.manager.settings.metering_enabled else self.frames_up

    # -- money ---------------------------------------------------------------------------------------------------

    @property
    def cycles(self) -> int:
        return self.billing.cycles

    @property
    def cost_nanos(self) -> int:
        return self.billing.cost_nanos

    @property
    def cut_off(self) -> bool:
        return self.billing.cut_off

    @property
    def cut_off_close(self) -> Close:
        """The close of a cut-off session: 4002, for the balance or for the monthly budget."""
        return closecodes.BUDGET_EXCEEDED if self.billing.over_budget else closecodes.INSUFFICIENT_BALANCE

    @property
    def audio_seconds(self) -> float:
        return self.meter.audio_seconds

    # -- client -> provider --------------------------------------------------------------------------------------

    def admit(self, data: bytes, kind: int) -> bool:
        """Meter one client frame: True if it may be sent now, False if it opened prepaid cycles that :meth:`pay`
        must debit first; raises :class:`UnmeterableFrame` (not to be sent) when the meter cannot read it. The relay's
        fast path (no coroutine of its own)."""
        if kind == BINARY:
            meter = self._meter_binary
            if meter is None:
                return True
            opened = meter(data)
        elif self._meter_text is not None:
            opened = self._meter_text(data.decode("utf-8", "replace"))
        else:
            return True
        if not opened:
            return True
        return self.opened(opened)

    def admit_size(self, size: int) -> bool:
        """:meth:`admit` for a binary frame known by its payload size only (the passthrough relay's header)."""
        meter = self.meter_size
        if meter is None:
            return True
        opened = meter(size)
        if not opened:
            return True
        return self.opened(opened)

    def opened(self, opened: int) -> bool:
        """A metered frame opened ``opened`` cycles: True if it may be sent now, False if :meth:`pay` must debit them
        first; raises :class:`UnmeterableFrame` when they cannot be billed. (The passthrough relay calls the binary
        meter itself and this only when a cycle opens: once per 5 s of audio.)"""
        billing = self.billing
        action = billing.opened(opened)
        if action is Action.FORWARD:
            self._billed(opened, opened * billing.price_nanos)
            return True
        if action is Action.RECORD:  # a hold paid it: sent now, written in the background
            self._billed(opened, opened * billing.price_nanos)
            if self._ledger is None:
                self._ledger = asyncio.create_task(self._write_ahead())
            return True
        if action is Action.REFUSE:
            raise UnmeterableFrame
        return False  # CHARGE/WAIT: pay() settles it; CUT_OFF (the budget): pay() says no

    def _billed(self, cycles: int, cost_nanos: int) -> None:
        """Cycles charged (or, postpaid, counted): metrics, and the trace's cycle event. Once per 5 s of audio."""
        self.manager.metrics.billed(self.provider_name, cycles, cost_nanos)
        if self.trace is not None:
            self.trace.event("cycle", opened=cycles, cycles=self.cycles, cost_usd=format_usd(cost_nanos))

    async def _write_ahead(self) -> None:
        """The background ledger writes (docs/billing.md#holds): the cycles opened from holds, and the next hold,
        until none is due. A failing write loses nothing: its cycles stay unrecorded for the next write (the next
        cycle's, then charged synchronously: no hold was taken) or the session's end."""
        billing = self.billing
        try:
            while (write := billing.next_write()) is not None:
                try:
                    result = await self.manager.settles.submit(
                        SettleRequest(self.id, self.account_id, billing.price_nanos, write)
                    )
                except Exception as exc:
                    billing.write_failed()
                    if unavailable(exc):
                        self.manager.database_failed()
                    log.warning("event=hold_write_failed session=%s account=%s error=%s", self.id, self.account_id, exc)
                    return
                billing.wrote(result)
        finally:
            if self._ledger is asyncio.current_task():
                self._ledger = None

    async def _settle(self) -> bool:
        """Perform the charge the core prepared (:attr:`Billing.charge`) and report it; False when refused. Raises
        :class:`ChargeFailed` when the ledger fails."""
        billing = self.billing
        charge = billing.charge
        assert charge is not None
        try:
            result = await self.manager.store.settle_cycles(self.id, self.account_id, billing.price_nanos, charge)
        except Exception as exc:
            billing.charge_failed()
            if unavailable(exc):
                self.manager.database_failed()
            log.exception("event=charge_failed session=%s account=%s", self.id, self.account_id)
            raise ChargeFailed(str(exc)) from exc
        return billing.settled(result.paid, result.held) is not Action.CUT_OFF

    async def pay(self) -> bool:
        """Settle the cycles the admitted frame opened: False (cut off, the frame must not be sent) if the balance
        cannot pay or the month's budget is reached (:attr:`cut_off_close` says which). Raises :class:`ChargeFailed`
        when the ledger fails.

        A background write in flight is waited for first (its hold may pay the frame); otherwise the frame's cycles
        are charged in one transaction with the unrecorded cycles and the next hold."""
        billing = self.billing
        if billing.cut_off:
            return False
        if self._ledger is not None:
            await asyncio.shield(self._ledger)
        cycles = billing.pending
        action = billing.resume()
        if action is Action.RECORD:
            self._ledger = asyncio.create_task(self._write_ahead())
        elif action is Action.CHARGE and not await self._settle():
            return False
        self._billed(cycles, cycles * billing.price_nanos)
        return True

    async def forward(self, data: bytes, kind: int) -> bool:
        """Meter, charge and forward one client frame; False (nothing sent) when the balance cannot pay.

        Raises :class:`ChargeFailed` (nothing sent) when the ledger fails, :class:`UnmeterableFrame` (nothing sent)
        when the meter cannot read the frame, ``ConnectionError`` when the provider's socket does."""
        if not self.admit(data, kind) and not await self.pay():
            return False
        await self.upstream.send(data, kind)
        self.frames_up += 1
        self.bytes_up += len(data)
        return True

    async def send_audio(self, frame: str | bytes) -> bool:
        """Pull mode: send one audio frame in the provider's framing (see ``Provider.audio_frame``); as ``forward``."""
        if isinstance(frame, str):
            return await self.forward(frame.encode(), TEXT)
        return await self.forward(frame, BINARY)

    # -- provider -> client --------------------------------------------------------------------------------------

    def received(self, frame: Frame) -> None:
        """Account for one frame from the provider (whoever read it): counters, the first message's in-band auth
        error, the graceful end's acknowledgement or the provider's close."""
        kind = frame[0]
        session = self.session
        if kind in DATA:
            data = frame[1]
            self.frames_down += 1
            self.bytes_down += len(data)
            self.last_down = data
            if not session.first_seen:
                session.first_message()
                self._inspect_first(data)
            if session.state is _ENDING:
                if kind == TEXT and self.provider.is_end_ack(data.decode("utf-8", "replace"), self.forwarded):
                    session.acknowledge_end()
                self._check_end()
        else:
            session.upstream_ended()
            self._upstream_done.set()
            self._check_end()

    def received_binary(self, size: int) -> None:
        """:meth:`received` for a binary provider frame the passthrough relay forwards unread (only its size)."""
        self.frames_down += 1
        self.bytes_down += size
        session = self.session
        if not session.first_seen:
            session.first_message()
        if session.state is _ENDING:
            self._check_end()

    def _check_end(self) -> None:
        if self.session.ending and self.session.end_reached(self.provider.closes_after_end):
            self._wake_end()

    def _wake_end(self) -> None:
        wake = self._end_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def receive(self) -> Frame:
        """The next provider frame, accounted for (see :meth:`received`)."""
        frame = await self.upstream.receive()
        self.received(frame)
        return frame

    def _inspect_first(self, data: bytes) -> None:
        if self.provider.is_auth_error(data):
            self.manager.metrics.upstream_auth_errors.labels(self.provider_name).inc()
            log.error(
                "event=upstream_auth_error session=%s provider=%s: the provider refused the operator's credential",
                self.id,
                self.provider_name,
            )

    def attach_reader(self) -> None:
        """Something (the relay, ``messages()``) consumes the provider's frames: ``finish`` then only waits."""
        self.session.attach_reader()

    def detach_reader(self) -> None:
        """The attached reader stopped (the relay's client is gone): a graceful end under way reads for itself."""
        self.session.detach_reader()
        self._wake_end()

    def messages(self) -> AsyncIterator[str | bytes]:
        """Provider messages (str for text, bytes for binary) until the provider session ends; records a
        provider-initiated close. Call it before ``finish``: from then on ``finish`` leaves the reading to you."""
        self.attach_reader()
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        if self.session.reader is Reader.SELF_DRAINING:
            # finish() started before anyone read: it owns the socket until the provider session is over.
            await self._upstream_done.wait()
            return
        receive = self.upstream.receive
        while True:
            frame = await receive()
            self.received(frame)
            kind = frame[0]
            if kind == TEXT:
                yield frame[1].decode("utf-8", "replace")
            elif kind == BINARY:
                yield frame[1]
            else:
                await self._provider_ended(frame)
                return

    async def _provider_ended(self, frame: Frame) -> None:
        """Complete the upstream close after a non-data frame and record a provider-initiated end."""
        kind, code, reason = self.upstream.ended(frame)
        if kind is FrameKind.CLOSE:
            record, echo = provider_ended(code, reason)
            self.session.keep(record)
            assert echo is not None
            await self.upstream.close(*echo)
        elif kind is not FrameKind.CLOSING:
            self.session.keep(provider_ended(None, "")[0])

    # -- ending ----------------------------------------------------------------------------------------------------

    async def finish(
        self,
        *,
        code: int | None = 1000,
        reason: str = "",
        closed_by: ClosedBy = ClosedBy.GATEWAY,
        upstream_close: Close | None = None,
    ) -> None:
        """Record how the session ended (first decision wins) and end the provider session gracefully: its end
        frames, then its final transcript or close (bounded by the finish timeout), then close the provider hop with
        ``upstream_close`` (``None``: 1000). Also when the provider closed first after the end frames, its close is
        answered with that code."""
        self.record(code, reason, closed_by)
        await self._end_provider(upstream_close or Close(1000, ""))

    def _client_sent_end(self) -> bool:
        last = self.last_text
        return last is not None and self.provider.is_end_message(last.decode("utf-8", "replace"))

    async def _end_provider(self, close: Close) -> None:
        session = self.session
        closes_after_end = self.provider.closes_after_end
        if self.upstream.closed or not session.begin_end(self._client_sent_end(), closes_after_end):
            return
        if session.end_frames_due:
            with contextlib.suppress(ConnectionError, RuntimeError):
                for frame in self.provider.end_frames(self.forwarded):
                    await self.upstream.send(frame.encode(), TEXT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.manager.settings.finish_timeout_seconds):
                if session.reader is Reader.ATTACHED and not session.end_reached(closes_after_end):
                    # Checked and made with no await between: neither can have happened unseen.
                    self._end_wake = asyncio.get_running_loop().create_future()
                    await self._end_wake
                if session.reader is not Reader.ATTACHED:
                    # Nobody reads (any more): drain and drop the provider's last messages here.
                    session.reader = Reader.SELF_DRAINING
                    while not session.end_reached(closes_after_end):
                        await self.receive()
        await self.upstream.close(*close)

    def provider_figures(self) -> ProviderFigures | None:
        """What the provider reported about this session in its last message, if anything (read once, at the end)."""
        if not self.last_down:
            return None
        return self.provider.end_figures(self.last_down.decode("utf-8", "replace"), self.forwarded)

    async def end(self) -> None:
        """Write the final totals and outcome, update metrics, log; safe to call more than once.

        A provider session still open here (the client went away before its 101, a task failed) is ended gracefully
        first, as for a lost client (docs/contract.md#graceful-provider-end)."""
        if self._ended:
            return
        self._ended = True
        if self._time_limit is not None:
            self._time_limit.cancel()
        if self._clock is not None:
            self._clock.cancel()
        if self._ledger is not None:
            # The end's totals include what the write records; the store keeps them right either way (a write that
            # commits after the end records nothing on an ended row), so the wait is bounded.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.manager.settings.database_timeout_seconds):
                    await asyncio.shield(self._ledger)
        if not self.upstream.closed:
            assert ABANDONED.to_upstream is not None and ABANDONED.graceful
            await self._end_provider(ABANDONED.to_upstream)
            if not self.upstream.closed:  # already ending elsewhere: nothing more to wait for
                await self.upstream.close(*ABANDONED.to_upstream)
        self.session.close()
        self.session.keep(ABANDONED.record)
        await self.manager.finalize(self)
