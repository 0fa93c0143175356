"""The session manager: this process's registry of live sessions and the periodic work on them.

It writes the totals that changed every ``ledger_flush_seconds`` (the rule of what may be written is
:meth:`sttgate.core.billing.Billing.unflushed`), renews slot leases, reaps sessions of dead gateways, closes idle
sessions (:class:`sttgate.core.idle.IdleWatch`: no metered client audio for the idle limit), and drains at shutdown.
Every close it asks for ends the provider session gracefully (:mod:`sttgate.core.closing`). Prepaid cycles are
debited by the session itself, one ``charge_cycles`` call per new 5-second cycle, before the audio that opens it is
forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sttgate.config import Settings
from sttgate.core import closecodes
from sttgate.core.accounts import bind
from sttgate.core.billing import Totals
from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.core.prices import ProviderPrices
from sttgate.core.reconciliation import audio_mismatch
from sttgate.gateway.logevents import log_event
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.store import SessionProgress

if TYPE_CHECKING:
    from sttgate.gateway.live import LiveSession
    from sttgate.store import Store

log = logging.getLogger("sttgate.gateway")


async def first_of(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


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
        self.price_book = settings.prices_in_force()
        self._tasks: list[asyncio.Task[None]] = []
        self._empty = asyncio.Event()
        self._empty.set()
        self._drain_cut = asyncio.Event()
        # Sessions accepted since the last ledger tick, with their start (the provider's 101): written in one batch.
        self._accepted: dict[str, datetime] = {}

    def accepted(self, live: LiveSession) -> None:
        """``live`` is a session now (its client got its 101); written by the next ledger tick, or at its end."""
        self._accepted[live.id] = live.opened_at

    async def _write_accepted(self) -> None:
        if self._accepted:
            accepted, self._accepted = self._accepted, {}
            try:
                await self.store.accept_sessions(list(accepted.items()))
            except BaseException:
                self._accepted = accepted | self._accepted  # written by a later tick
                raise

    def prices(self, provider: str) -> ProviderPrices:
        """``provider``'s table of the price book in force (docs/billing.md#the-price-book)."""
        return self.price_book.for_provider(provider, self.settings.provider(provider).rate)

    def price_nanos(self, provider: str) -> int:
        """Price of one 5-second cycle of ``provider``'s default model, without add-ons."""
        return cycle_price_nanos(self.prices(provider).default_rate)

    # -- registry -------------------------------------------------------------------------------------------------

    def register(self, live: LiveSession) -> None:
        self.live[live.id] = live
        self._empty.clear()
        self.metrics.sessions_open.labels(live.provider_name).inc()

    async def finalize(self, live: LiveSession) -> None:
        """Last write of a session (called by ``LiveSession.end``, once its outcome is recorded)."""
        self.live.pop(live.id, None)
        if not self.live:
            self._empty.set()
        closed = live.session.closed
        assert closed is not None
        self.metrics.sessions_open.labels(live.provider_name).dec()
        self.metrics.absorb(live)
        self.metrics.sessions_ended.labels(closed.closed_by, str(closed.code or "")).inc()
        audio = live.audio_seconds
        figures = live.provider_figures()
        started_at = self._accepted.pop(live.id, None)
        try:
            if started_at is not None:  # accepted since the last tick: a session, written before its end
                await self.store.accept_sessions([(live.id, started_at)])
            await self.store.end_session(
                live.id,
                audio_seconds=audio,
                cycles=live.cycles,
                cost_nanos=live.cost_nanos,
                close_code=closed.code,
                close_reason=closed.reason,
                closed_by=closed.closed_by,
            )
            if figures is not None:
                if audio_mismatch(audio, figures.audio_seconds):
                    self.metrics.reconciliation_mismatches.labels(live.provider_name).inc()
                await self.store.record_provider_figures(live.id, figures.audio_seconds, figures.session_seconds)
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
                close_code=closed.code,
                close_reason=closed.reason,
                closed_by=closed.closed_by,
                duration_seconds=f"{time.monotonic() - live.started:.3f}",
                frames_up=live.frames_up,
                frames_down=live.frames_down,
                provider_audio_seconds=None if figures is None else figures.audio_seconds,
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
            asyncio.create_task(self._every(s.account_refresh_seconds, self.watch_accounts, "accounts")),
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
        await self._write_accepted()
        batch: list[tuple[LiveSession, Totals]] = []
        for live in self.live.values():
            totals = live.billing.unflushed()
            if totals is not None:
                batch.append((live, totals))
        if not batch:
            return
        await self.store.flush_progress([SessionProgress(live.id, *totals) for live, totals in batch])
        for live, totals in batch:
            live.billing.written(totals)

    async def renew(self) -> None:
        if self.live:
            await self.store.renew_leases(list(self.live), self.settings.lease_ttl_seconds)

    async def reap(self) -> None:
        reaped = await self.store.reap_dead_sessions()
        if reaped:
            log_event("sessions_reaped", count=len(reaped), sessions=",".join(reaped))

    async def sweep(self) -> None:
        """Metrics catch-up and idle timeouts; compares the metered audio, so the frame path stores no timestamps."""
        now = time.monotonic()
        for live in list(self.live.values()):
            self.metrics.absorb(live)
            if live.idle.idle(live.audio_activity, now):
                live.request_close(*closecodes.IDLE_TIMEOUT)

    async def watch_accounts(self) -> None:
        """Bind live sessions to their accounts as they are now (docs/billing.md#account-changes): one read for all."""
        if not self.live:
            return
        states = await self.store.account_states({live.account_id for live in self.live.values()})
        for live in list(self.live.values()):
            state = states.get(live.account_id)
            if state is None:
                continue
            binding = bind(state)
            live.billing.rebill(binding.prepaid)
            if binding.close is not None:
                live.request_close(*binding.close)

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
        await self.close_all(*closecodes.SERVICE_RESTART)
        await self.flush()
        log_event("drain_done", sessions_left=len(self.live))
