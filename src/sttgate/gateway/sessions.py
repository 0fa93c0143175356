"""Live sessions: the per-process registry, the ledger, and the ``LiveSession`` API shared by push, pull and SDK routes.

A :class:`LiveSession` is one provider session opened by :func:`sttgate.gateway.handshake.open_stream` (slot taken,
upstream connected). Whatever feeds it (the push relay, a pull task, a provider-shaped route) uses the same calls::

    live = await open_stream(app, principal, provider, forwarded, kind="pull")  # raises Refusal
    try:
        reader = asyncio.create_task(deliver(live.messages()))  # str (text) / bytes (binary) until the provider ends
        for frame in frames:                      # provider.audio_frame(pcm) per 100 ms chunk
            if not await live.send_audio(frame):  # meter, charge, forward; False: the balance cannot pay (not sent)
                await live.finish(code=4002, reason="insufficient balance", closed_by="gateway")
                break
        else:
            await live.finish(code=1000, reason="source ended", closed_by="client")  # graceful provider end
        await reader
    finally:
        await live.end()                          # totals, close code, closed_by to the database; idempotent

``finish`` sends the provider's end frames and waits (bounded) for its final transcript or its close. Call
``messages()`` before ``finish`` (e.g. ``it = live.messages()`` before starting the task that iterates it) and keep
iterating meanwhile to receive that transcript; if nobody reads, ``finish`` drains and drops it. ``close_requested``
must be watched by whatever drives the session: the gateway sets it for an idle timeout and at the end of a drain.

Money: prepaid cycles are debited with one ``charge_cycles`` call per new 5-second cycle, before the audio that opens it
is forwarded; postpaid cycles are counted in memory. The :class:`SessionManager` writes totals that changed every
``ledger_flush_seconds``, renews slot leases, reaps sessions of dead gateways, and closes idle sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType

from sttgate.config import Settings
from sttgate.core import closecodes
from sttgate.core.metering import Meter
from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.providers import PROVIDERS
from sttgate.store import SessionProgress

if TYPE_CHECKING:
    from sttgate.providers import Provider
    from sttgate.store import Principal, Store

log = logging.getLogger("sttgate.gateway")

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY

# Markers of a provider saying, in-band, that the operator's credential is bad (NOTES.md).
_AUTH_ERROR_MARKERS = (b'"auth_error"', b"Unauthorized Connection")


def log_event(event: str, **fields: Any) -> None:
    """One structured ``key=value`` line; values with spaces or quotes are JSON-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = "" if value is None else str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    log.info(" ".join(parts))


class ChargeFailed(RuntimeError):
    """The ledger could not debit a prepaid cycle (database error): the frame was not forwarded."""


async def first_of(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def echo_code(code: int) -> int:
    """The code that completes a close handshake the peer started (its own, when it may be sent)."""
    return code if closecodes.may_send(code) else 1000


def received_code(code: int) -> int:
    """A received close code as recorded: aiohttp reports a close frame without a status as 0 (RFC: 1005)."""
    return code or 1005


class LiveSession:
    """One open provider session: meter, charges, counters, and how it ended."""

    def __init__(
        self,
        manager: SessionManager,
        *,
        session_id: str,
        principal: Principal,
        provider: Provider,
        kind: str,
        forwarded: str,
        upstream: ClientWebSocketResponse,
    ) -> None:
        self.manager = manager
        self.id = session_id
        self.account_id = principal.account_id
        self.provider = provider
        self.provider_name = provider.name
        self.kind = kind
        self.forwarded = forwarded
        self.upstream = upstream
        self.meter = meter = provider.new_meter(forwarded) if manager.settings.metering_enabled else Meter()
        # Bound methods looked up once; None = this frame kind is never metered (no call on the frame path).
        self._meter_binary = meter.binary if type(meter).binary is not Meter.binary else None
        # Only meters that read text frames get them decoded (ElevenLabs); AssemblyAI text is never decoded.
        self._meter_text = meter.text if type(meter).text is not Meter.text else None
        # True while a charge for the last metered frame is in flight: that frame may yet be refunded, so a ledger
        # flush meanwhile must not write it (totals never go down).
        self.charging = False
        self.prepaid = principal.balance_nanos is not None
        self.price_nanos = manager.price_nanos(provider.name)
        self.started = time.monotonic()
        # Plain counters on the frame path; metrics pick up the difference periodically.
        self.frames_up = 0
        self.bytes_up = 0
        self.frames_down = 0
        self.bytes_down = 0
        self.reported = [0, 0, 0, 0]
        self.cycles = 0
        self.cost_nanos = 0
        self.flushed: tuple[float, int] = (0.0, 0)
        self.idle_mark = (0, 0, time.monotonic())
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by: str | None = None
        self.close_requested: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.cut_off = False
        self._first_seen = False
        self._ending = False
        # True once something consumes provider messages (the relay, ``messages()``): ``finish`` then only waits.
        self.reader_attached = False
        self._self_draining = False
        self._end_ack = asyncio.Event()
        self._upstream_done = asyncio.Event()
        self._ended = False

    # -- outcome -------------------------------------------------------------------------------------------------

    def record(self, code: int | None, reason: str, closed_by: str) -> None:
        """Remember how the session ended; the first decision wins."""
        if self.closed_by is None:
            self.close_code = code
            self.close_reason = reason
            self.closed_by = closed_by

    def request_close(self, code: int, reason: str) -> None:
        """Ask whatever drives the session (relay, pull task) to close it with a gateway code."""
        if not self.close_requested.done():
            self.close_requested.set_result((code, reason))

    # -- client -> provider --------------------------------------------------------------------------------------

    async def forward(self, data: bytes, opcode: WSMsgType) -> bool:
        """Meter, charge and forward one client frame; False (nothing sent) when the balance cannot pay.

        Raises :class:`ChargeFailed` (nothing sent) when the ledger fails, ``ConnectionError`` when the provider's
        socket does."""
        if opcode is BINARY:
            meter = self._meter_binary
            opened = meter(data) if meter is not None else 0
        elif self._meter_text is not None:
            opened = self._meter_text(data.decode("utf-8", "replace"))
        else:
            opened = 0
        if opened:
            self.charging = True
            try:
                paid = await self._pay(opened)
            except Exception as exc:
                self.charging = False
                self.meter.refund_last(opened)
                self.cut_off = True
                log.exception("event=charge_failed session=%s account=%s", self.id, self.account_id)
                raise ChargeFailed(str(exc)) from exc
            self.charging = False
            if not paid:
                self.meter.refund_last(opened)
                self.cut_off = True
                return False
        await self.upstream.send_frame(data, opcode)
        self.frames_up += 1
        self.bytes_up += len(data)
        return True

    async def send_audio(self, frame: str | bytes) -> bool:
        """Pull mode: send one audio frame in the provider's framing (see ``Provider.audio_frame``); as ``forward``."""
        if isinstance(frame, str):
            return await self.forward(frame.encode(), TEXT)
        return await self.forward(frame, BINARY)

    async def _pay(self, cycles: int) -> bool:
        cost = cycles * self.price_nanos
        if self.prepaid and not await self.manager.store.charge_cycles(
            self.id, self.account_id, cycles, self.price_nanos
        ):
            return False
        self.cycles += cycles
        self.cost_nanos += cost
        self.manager.metrics.billed(self.provider_name, cycles, cost)
        return True

    # -- provider -> client --------------------------------------------------------------------------------------

    async def receive(self) -> WSMessage:
        """The next upstream message (aiohttp's), counted; also what ``finish`` and auth monitoring need to see."""
        msg = await self.upstream.receive()
        t = msg.type
        if t is TEXT or t is BINARY:
            self.frames_down += 1
            self.bytes_down += len(msg.data)
            if not self._first_seen:
                self._first_seen = True
                self._inspect_first(msg.data)
            if (
                self._ending
                and t is TEXT
                and self.provider.is_end_ack(msg.data.decode("utf-8", "replace"), self.forwarded)
            ):
                self._end_ack.set()
        else:
            self._upstream_done.set()
        return msg

    def _inspect_first(self, data: bytes) -> None:
        if any(marker in data for marker in _AUTH_ERROR_MARKERS):
            self.manager.metrics.upstream_auth_errors.labels(self.provider_name).inc()
            log.error(
                "event=upstream_auth_error session=%s provider=%s: the provider refused the operator's credential",
                self.id,
                self.provider_name,
            )

    def messages(self) -> AsyncIterator[str | bytes]:
        """Provider messages (str for text, bytes for binary) until the provider session ends; records a
        provider-initiated close. Call it before ``finish``: from then on ``finish`` leaves the reading to you."""
        self.reader_attached = True
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        if self._self_draining:
            # finish() started before anyone read: it owns the socket until the provider session is over.
            await self._upstream_done.wait()
            return
        while True:
            msg = await self.receive()
            t = msg.type
            if t is TEXT:
                yield msg.data.decode("utf-8", "replace")
            elif t is BINARY:
                yield msg.data
            else:
                await self.close_upstream_after(msg)
                return

    async def close_upstream_after(self, msg: WSMessage) -> None:
        """Complete the upstream close after a non-data message and record a provider-initiated end."""
        if msg.type is WSMsgType.CLOSE:
            reason = msg.extra or ""
            code, _ = closecodes.to_client(msg.data, reason)
            self.record(code, reason, "upstream")
            await self.upstream.close(code=echo_code(msg.data), message=reason.encode())
        elif msg.type is not WSMsgType.CLOSING:
            self.record(*closecodes.UPSTREAM_LOST, "upstream")

    # -- ending ----------------------------------------------------------------------------------------------------

    async def finish(self, *, code: int = 1000, reason: str = "", closed_by: str = "gateway") -> None:
        """End the provider session gracefully: its end frames, then its final transcript or close (bounded)."""
        self.record(code, reason, closed_by)
        if self._ending or self.upstream.closed:
            return
        self._ending = True
        timeout = self.manager.settings.finish_timeout_seconds
        with contextlib.suppress(ConnectionError, RuntimeError):
            for frame in self.provider.end_frames(self.forwarded):
                await self.upstream.send_str(frame)
        waiter = self._upstream_done if self.provider.closes_after_end else self._end_ack
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self.reader_attached:
                    await first_of(waiter, self._upstream_done)
                else:
                    self._self_draining = True
                    while not waiter.is_set() and not self._upstream_done.is_set():
                        await self.receive()
        await self.upstream.close(code=1000)

    async def end(self) -> None:
        """Write the final totals and outcome, update metrics, log; safe to call more than once."""
        if self._ended:
            return
        self._ended = True
        if not self.upstream.closed:
            gone = closecodes.CLIENT_GONE
            await self.upstream.close(code=gone.code, message=gone.reason.encode())
        self.record(None, "", "gateway")
        await self.manager.finalize(self)

    @property
    def audio_seconds(self) -> float:
        return self.meter.audio_seconds


class SessionManager:
    """Registry of this process's live sessions and the periodic work on them."""

    def __init__(self, settings: Settings, store: Store, metrics: GatewayMetrics, gateway_id: str) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.live: dict[str, LiveSession] = {}
        self.draining = False
        self.opening = 0  # handshakes between slot and upstream 101 (admission control counts them)
        self._prices = {name: cycle_price_nanos(p.rate(settings)) for name, p in PROVIDERS.items()}
        self._tasks: list[asyncio.Task[None]] = []
        self._empty = asyncio.Event()
        self._empty.set()
        self._drain_cut = asyncio.Event()

    def price_nanos(self, provider: str) -> int:
        """Price of one 5-second cycle of ``provider``."""
        return self._prices[provider]

    # -- registry -------------------------------------------------------------------------------------------------

    def register(self, live: LiveSession) -> None:
        self.live[live.id] = live
        self._empty.clear()
        self.metrics.sessions_open.labels(live.provider_name).inc()

    async def finalize(self, live: LiveSession) -> None:
        """Last write of a session (called by ``LiveSession.end``)."""
        self.live.pop(live.id, None)
        if not self.live:
            self._empty.set()
        self.metrics.sessions_open.labels(live.provider_name).dec()
        self.metrics.absorb(live)
        self.metrics.sessions_ended.labels(live.closed_by, str(live.close_code or "")).inc()
        audio = live.audio_seconds
        try:
            await self.store.end_session(
                live.id,
                audio_seconds=audio,
                cycles=live.cycles,
                cost_nanos=live.cost_nanos,
                close_code=live.close_code,
                close_reason=live.close_reason,
                closed_by=live.closed_by,
            )
        finally:
            log_event(
                "session_end",
                session=live.id,
                account=live.account_id,
                provider=live.provider_name,
                kind=live.kind,
                audio_seconds=f"{audio:.3f}",
                cycles=live.cycles,
                cost_usd=format_usd(live.cost_nanos),
                close_code=live.close_code,
                close_reason=live.close_reason,
                closed_by=live.closed_by,
                duration_seconds=f"{time.monotonic() - live.started:.3f}",
                frames_up=live.frames_up,
                frames_down=live.frames_down,
            )

    # -- periodic work --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        sweep = min(1.0, s.idle_timeout_seconds / 4)
        self._tasks = [
            asyncio.create_task(self._every(s.ledger_flush_seconds, self.flush, "flush")),
            asyncio.create_task(self._every(s.lease_renew_seconds, self.renew, "renew")),
            asyncio.create_task(self._every(s.lease_ttl_seconds, self.reap, "reap")),
            asyncio.create_task(self._every(sweep, self.sweep, "sweep")),
        ]

    async def stop(self) -> None:
        """Stop the periodic work and write what is left."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.flush()

    async def _every(self, period: float, job: Any, name: str) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except Exception:
                self.metrics.background_errors.labels(name).inc()
                log.exception("event=background_error task=%s", name)

    async def flush(self) -> None:
        """Write the totals of every session that changed since its last write (one batched call).

        The store only ever raises totals, so a flush racing a charge or the final write cannot roll anything back.
        """
        batch: list[tuple[LiveSession, tuple[float, int]]] = []
        for live in self.live.values():
            # A frame whose charge is in flight is not settled: it is written by a later flush, or never (refunded).
            audio = live.meter.audio_seconds_without_last() if live.charging else live.audio_seconds
            state = (audio, live.cycles)
            if state != live.flushed:
                batch.append((live, state))
        if not batch:
            return
        await self.store.flush_progress(
            [SessionProgress(live.id, audio, cycles, cycles * live.price_nanos) for live, (audio, cycles) in batch]
        )
        for live, state in batch:
            live.flushed = state

    async def renew(self) -> None:
        if self.live:
            await self.store.renew_leases(list(self.live), self.settings.lease_ttl_seconds)

    async def reap(self) -> None:
        reaped = await self.store.reap_dead_sessions()
        if reaped:
            log_event("sessions_reaped", count=len(reaped), sessions=",".join(reaped))

    async def sweep(self) -> None:
        """Metrics catch-up and idle timeouts; compares frame counters, so the frame path stores no timestamps."""
        now = time.monotonic()
        idle_limit = self.settings.idle_timeout_seconds
        for live in list(self.live.values()):
            self.metrics.absorb(live)
            frames = (live.frames_up, live.frames_down)
            if frames != live.idle_mark[:2]:
                live.idle_mark = (*frames, now)
            elif now - live.idle_mark[2] >= idle_limit:
                live.request_close(1008, "idle timeout")

    # -- shutdown -------------------------------------------------------------------------------------------------

    async def close_all(self, code: int, reason: str, timeout: float = 10.0) -> None:
        """Ask every live session to close with a gateway code and wait (bounded) until they have ended."""
        for live in list(self.live.values()):
            live.request_close(code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._empty.wait()

    def cut_drain(self) -> None:
        """End the drain period now (a second SIGTERM/SIGINT): live sessions get their 1012 at once."""
        self._drain_cut.set()

    async def drain(self, seconds: float) -> None:
        """SIGTERM: refuse new sessions, let live ones run ``seconds``, then close the rest with 1012."""
        self.draining = True
        self.metrics.draining.set(1)
        log_event("drain_start", sessions=len(self.live), drain_seconds=seconds)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await first_of(self._empty, self._drain_cut)
        await self.close_all(1012, "service restart")
        await self.flush()
        log_event("drain_done", sessions_left=len(self.live))
