"""The session manager: this process's registry of live sessions and the periodic work on them.

It writes the totals whose cycles changed every ``ledger_flush_seconds``, and every session's audio progress every
``ledger_progress_seconds`` (the rule of what may be written is :meth:`sttgate.core.billing.Billing.unflushed`), renews
slot leases, reaps sessions of dead gateways, closes idle sessions (:class:`sttgate.core.idle.IdleWatch`: no metered
client audio for the idle limit), closes the sessions an operator asked to close through the admin API on any gateway
(polled every ``CLOSE_POLL_SECONDS``), and drains at shutdown.
Every ``account_refresh_seconds`` it reads its sessions' accounts, their monthly budgets and this month's spending
(one read each), so that each session's :class:`~sttgate.core.budget.BudgetWatch` stays current without a database
call on the frame path, and records the ``budget.threshold`` events that spending has reached.
Every close it asks for ends the provider session gracefully (:mod:`sttgate.core.closing`). Prepaid cycles are
paid by the session itself, one ledger write per new 5-second cycle: in the background when the session's hold paid
the cycle (docs/billing.md#holds), group-committed with the other sessions' (:attr:`SessionManager.settles`); else on
the frame path. The flush never writes a cycle the ledger still counts as held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sttgate.config import Settings
from sttgate.core import budget, closecodes
from sttgate.core.accounts import bind
from sttgate.core.billing import Settlement, Totals
from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.core.outage import Backoff, PendingEnd, PendingEnds, WriteHealth
from sttgate.core.prices import ProviderPrices
from sttgate.core.reconciliation import audio_mismatch
from sttgate.gateway.groupcommit import GroupCommit
from sttgate.gateway.logevents import log_event
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.store import NotFoundError, SessionEnd, SessionProgress, SettleRequest, unavailable
from sttgate.store.database import utcnow
from sttgate.store.events import MonthSpend

if TYPE_CHECKING:
    from sttgate.gateway.live import LiveSession
    from sttgate.store import Store

# How long a background ledger write waits for others to share its transaction (well under a cycle's 5 s).
LEDGER_GATHER_SECONDS = 0.25

log = logging.getLogger("sttgate.gateway")

_T = TypeVar("_T")

# An operator's close request, made on any gateway, reaches the one running the session within this; with the
# graceful end that follows, the session ends within 1 s (docs/admin-api.md#close-a-session).
CLOSE_POLL_SECONDS = 0.5


def _consume(task: asyncio.Task[Any]) -> None:
    """A write that outlived its bound may fail later: its failure was already counted, so do not let asyncio log it
    as never retrieved."""
    if not task.cancelled():
        task.exception()


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
        # Database outage: ended sessions not written yet, retried with backoff; recent writes' outcome for /readyz.
        self.pending = PendingEnds(settings.pending_ends_max)
        self.writes = WriteHealth(settings.database_failure_window_seconds)
        self._backoff = Backoff()
        self._retry_wake = asyncio.Event()
        self._retry_lock = asyncio.Lock()
        self._writing: dict[str, asyncio.Task[Any]] = {}
        self._progress_at = time.monotonic()  # when the flush last wrote every session's progress
        self._ends: GroupCommit[PendingEnd, None] = GroupCommit(self._write_ends)
        # Prepaid sessions' background ledger writes (docs/billing.md#holds), group-committed like the ends, after
        # gathering for LEDGER_GATHER_SECONDS: one transaction for every session whose cycle opened meanwhile. The
        # next hold is due only when the next cycle opens, 5 s later; on SQLite a batch of 10 costs a quarter of
        # what 10 single writes cost (bench/bench_ledger.py).
        self.settles: GroupCommit[SettleRequest, Settlement] = GroupCommit(self._settle_batch, LEDGER_GATHER_SECONDS)
        # The budgeted accounts of live sessions and their spending this month, as last read; accounts whose session
        # ended since (their final cost may pass a threshold); the thresholds this process has recorded.
        self._spend: dict[str, MonthSpend] = {}
        self._ended_accounts: set[str] = set()
        self._thresholds_recorded: set[tuple[str, str, int]] = set()

    def accepted(self, live: LiveSession) -> None:
        """``live`` is a session now (its client got its 101); written by the next ledger tick, or at its end."""
        self._accepted[live.id] = live.opened_at

    async def _write_accepted(self) -> None:
        if self._accepted:
            accepted, self._accepted = self._accepted, {}
            try:
                rows = list(accepted.items())
                await self.database_write("accept", lambda: self.store.accept_sessions(rows))
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
        self._watch_budget(live)
        self.metrics.sessions_open.labels(live.provider_name).inc()

    async def finalize(self, live: LiveSession) -> None:
        """Last write of a session (called by ``LiveSession.end``, once its outcome is recorded).

        When the database cannot take it, the end is kept in memory and retried until written (its lease renewed
        meanwhile), so the session's totals are not lost and its client still gets its normal close
        (docs/operations.md#database-outage)."""
        self.live.pop(live.id, None)
        self._ended_accounts.add(live.account_id)
        if not self.live:
            self._empty.set()
        closed = live.session.closed
        assert closed is not None
        self.metrics.sessions_open.labels(live.provider_name).dec()
        self.metrics.absorb((live,))
        self.metrics.sessions_ended.labels(closed.closed_by, str(closed.code or "")).inc()
        audio = live.audio_seconds
        figures = live.provider_figures()
        if figures is not None and audio_mismatch(audio, figures.audio_seconds):
            self.metrics.reconciliation_mismatches.labels(live.provider_name).inc()
        if live.trace is not None:
            live.trace.event(
                "close",
                code=closed.code or 0,
                reason=closed.reason,
                closed_by=str(closed.closed_by),
                audio_seconds=audio,
                cycles=live.cycles,
                cost_usd=format_usd(live.cost_nanos),
            )
        end = PendingEnd(
            live.id,
            audio_seconds=audio,
            cycles=live.cycles,
            cost_nanos=live.cost_nanos,
            close_code=closed.code,
            close_reason=closed.reason,
            closed_by=closed.closed_by,
            accepted_at=self._accepted.pop(live.id, None),
            provider_audio_seconds=None if figures is None else figures.audio_seconds,
            provider_session_seconds=None if figures is None else figures.session_seconds,
            has_figures=figures is not None,
        )
        try:
            await self._write_end(end)
        except Exception as exc:
            if not unavailable(exc):
                raise
            self.keep_end(end, exc)
        finally:
            log_event(
                "session_end",
                session=live.id,
                account=live.account_id,
                key=live.key_id,
                provider=live.provider_name,
                model=(live.price.model if live.price is not None else None) or "",
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
            if live.trace is not None:  # its end recorded (or kept for later): the session's trace is complete
                live.trace.end()

    # -- database outage (docs/operations.md#database-outage) -------------------------------------------------------

    async def database_write(self, key: str, write: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``write()`` and wait for it at most ``database_timeout_seconds``; record its outcome for ``/readyz``.

        The write runs as a task of its own and is not cancelled at the bound: a driver call cut short still waits
        for its thread or socket while it cleans up (SQLite's busy timeout is 15 s), which is the hang this bound is
        for. A write still running under the same ``key`` is not started twice: the call fails at once instead, so
        periodic work cannot pile up behind a locked database. A write that completes after its bound is harmless:
        every write here may be repeated (totals only rise, an end is written once).
        """
        running = self._writing.get(key)
        if running is not None and not running.done():
            self.database_failed()
            raise TimeoutError(f"the previous {key} write is still running")
        task: asyncio.Task[_T] = asyncio.ensure_future(write())
        self._writing[key] = task
        task.add_done_callback(lambda t: self._writing.pop(key, None) if self._writing.get(key) is t else None)
        task.add_done_callback(_consume)
        try:
            async with asyncio.timeout(self.settings.database_timeout_seconds):
                result = await asyncio.shield(task)
        except Exception as exc:
            if unavailable(exc):
                self.database_failed()
            raise
        self.writes.succeeded(time.monotonic())
        return result

    def database_failed(self) -> None:
        """A write (or a handshake's database work) failed because of the database: ``/readyz`` says so."""
        self.writes.failed(time.monotonic())
        self.metrics.database_write_failures.inc()

    async def writable(self) -> bool:
        """Whether the database takes writes: the outcome of this process's recent writes, else a write probe."""
        if not self.writes.seen_within(time.monotonic()):
            with contextlib.suppress(Exception):
                await self.database_write("probe", self.store.probe_write)
        return self.writes.writable(time.monotonic())

    async def _write_end(self, end: PendingEnd) -> None:
        """Write ``end`` in the next batch of ends (group commit: one transaction for every end queued while the
        previous batch was written); returns once it is written, so the slot is free by then."""
        await self._ends.submit(end)

    async def _settle_batch(self, requests: list[SettleRequest]) -> list[Settlement | BaseException]:
        return await self.store.settle_cycles_batch(requests)

    async def _write_ends(self, ends: list[PendingEnd]) -> list[BaseException | None]:
        return await self.database_write("ends", lambda: self._end_statements(ends))

    async def _end_statements(self, ends: list[PendingEnd]) -> list[BaseException | None]:
        """A batch's writes: the sessions accepted since the last tick (written before their ends), the ends, the
        provider's figures; one statement each for the whole batch. NotFoundError for an end without its row."""
        accepted = [(e.session_id, e.accepted_at) for e in ends if e.accepted_at is not None]
        if accepted:
            await self.store.accept_sessions(accepted)
        missing = await self.store.end_sessions(
            [
                SessionEnd(
                    e.session_id,
                    audio_seconds=e.audio_seconds,
                    cycles=e.cycles,
                    cost_nanos=e.cost_nanos,
                    close_code=e.close_code,
                    close_reason=e.close_reason,
                    closed_by=e.closed_by,
                )
                for e in ends
            ]
        )
        figures = [
            (e.session_id, e.provider_audio_seconds, e.provider_session_seconds)
            for e in ends
            if e.has_figures and e.session_id not in missing
        ]
        if figures:
            await self.store.record_provider_figures_batch(figures)
        return [NotFoundError(f"no session {e.session_id}") if e.session_id in missing else None for e in ends]

    def keep_end(self, end: PendingEnd, exc: BaseException | None = None) -> None:
        """Keep ``end`` until it is written (bounded by ``pending_ends_max``; the oldest beyond it is logged)."""
        given_up = self.pending.add(end)
        self.metrics.pending_ends.set(len(self.pending))
        log.warning(
            "event=session_end_pending session=%s pending=%d error=%s",
            end.session_id,
            len(self.pending),
            type(exc).__name__ if exc is not None else "",
        )
        if given_up is not None:
            self._give_up(given_up, "pending_ends_max")
        self._retry_wake.set()

    def _give_up(self, end: PendingEnd, why: str) -> None:
        """An end that will not be written: logged with everything needed to write it by hand."""
        self.metrics.ends_given_up.inc()
        log_event(
            "session_end_lost",
            level=logging.ERROR,
            why=why,
            session=end.session_id,
            audio_seconds=f"{end.audio_seconds:.3f}",
            cycles=end.cycles,
            cost_usd=format_usd(end.cost_nanos),
            close_code=end.close_code,
            close_reason=end.close_reason,
            closed_by=end.closed_by,
            started_at=None if end.accepted_at is None else end.accepted_at.isoformat(),
        )

    async def retry_pending(self) -> bool:
        """Write the pending ends, oldest first; True once none is left, False at the first that fails."""
        async with self._retry_lock:
            try:
                for end in self.pending:
                    try:
                        await self._write_end(end)
                    except NotFoundError:
                        log.warning("event=session_end_no_row session=%s", end.session_id)
                    except Exception as exc:
                        if unavailable(exc):
                            return False
                        log.exception("event=session_end_failed session=%s", end.session_id)
                        self._give_up(end, type(exc).__name__)
                    else:
                        log_event("session_end_written", session=end.session_id, late=True)
                    self.pending.written(end.session_id)
            finally:
                self.metrics.pending_ends.set(len(self.pending))
            return True

    async def _retry_ends(self) -> None:
        """Retry pending ends with backoff until every one is written."""
        failures = 0
        while True:
            if not self.pending:
                failures = 0
                self._retry_wake.clear()
                await self._retry_wake.wait()
            await asyncio.sleep(self._backoff.delay(failures + 1))
            failures = 0 if await self.retry_pending() else failures + 1

    async def _write_pending_at_shutdown(self) -> None:
        """Retry what is pending for at most ``shutdown_write_seconds``, then log what could not be written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_write_seconds
        failures = 0
        while self.pending and not await self.retry_pending():
            failures += 1
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(left, self._backoff.delay(failures)))
        for end in self.pending:
            self._give_up(end, "shutdown")
            self.pending.written(end.session_id)
        self.metrics.pending_ends.set(0)

    # -- periodic work --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        sweep = min(1.0, s.idle_timeout_seconds / 4)
        self._tasks = [
            asyncio.create_task(self._every(s.ledger_flush_seconds, self.flush_tick, "flush")),
            asyncio.create_task(self._every(s.lease_renew_seconds, self.renew, "renew")),
            asyncio.create_task(self._every(s.lease_ttl_seconds, self.reap, "reap")),
            asyncio.create_task(self._every(sweep, self.sweep, "sweep")),
            asyncio.create_task(self._every(s.account_refresh_seconds, self.watch_accounts, "accounts")),
            asyncio.create_task(self._every(CLOSE_POLL_SECONDS, self.close_requested, "close_requests")),
            asyncio.create_task(self._retry_ends()),
        ]

    async def stop(self) -> None:
        """Stop the periodic work and write what is left: background ledger writes, totals of sessions still live,
        then pending ends (bounded by ``shutdown_write_seconds``; what cannot be written is logged)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.settles.idle()
        try:
            await self.flush()
        except Exception:
            log.exception("event=final_flush_failed sessions=%d", len(self.live))
        await self._write_pending_at_shutdown()

    async def _every(self, period: float, job: Any, name: str) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except Exception as exc:
                self.metrics.background_errors.labels(name).inc()
                if unavailable(exc):  # an outage: one line per failure, not a traceback every tick
                    log.warning("event=background_error task=%s error=%s: %s", name, type(exc).__name__, exc)
                else:
                    log.exception("event=background_error task=%s", name)

    async def flush_tick(self) -> None:
        """The periodic flush: totals whose cycles changed; every changed total once per ``ledger_progress_seconds``."""
        now = time.monotonic()
        progress = now - self._progress_at >= self.settings.ledger_progress_seconds
        if progress:
            self._progress_at = now
        await self.flush(progress)

    async def flush(self, progress: bool = True) -> None:
        """Write the totals of every session that changed since its last write (one batched call); without
        ``progress``, only those whose cycles changed (:meth:`~sttgate.core.billing.Billing.unflushed`).

        The store only ever raises totals, so a flush racing a charge or the final write cannot roll anything back.
        """
        await self._write_accepted()
        batch: list[tuple[LiveSession, Totals]] = []
        for live in self.live.values():
            totals = live.billing.unflushed(progress)
            if totals is not None:
                batch.append((live, totals))
        if not batch:
            return
        rows = [SessionProgress(live.id, *totals) for live, totals in batch]
        await self.database_write("flush", lambda: self.store.flush_progress(rows))
        for live, totals in batch:
            live.billing.written(totals)

    async def renew(self) -> None:
        """Renew the leases of live sessions and of ended ones whose end is not written yet: this process still holds
        them, so no reaper may close them as ``gateway_crash`` or free their slot."""
        held = [*self.live, *self.pending.ids()]
        if held:
            ttl = self.settings.lease_ttl_seconds
            await self.database_write("renew", lambda: self.store.renew_leases(held, ttl))

    async def reap(self) -> None:
        """Close sessions whose gateway died. Pending ends are written and this process's leases renewed first, so that
        after an outage this reaper does not take its own sessions for dead ones."""
        if self.pending:
            await self.retry_pending()
        await self.renew()
        reaped = await self.database_write("reap", self.store.reap_dead_sessions)
        if reaped:
            log_event("sessions_reaped", count=len(reaped), sessions=",".join(reaped))

    async def sweep(self) -> None:
        """Metrics catch-up and idle timeouts; compares the metered audio, so the frame path stores no timestamps."""
        now = time.monotonic()
        sessions = list(self.live.values())
        self.metrics.absorb(sessions)
        for live in sessions:
            if live.idle.idle(live.audio_activity, now):
                live.request_close(*closecodes.IDLE_TIMEOUT)

    async def watch_accounts(self) -> None:
        """Bind live sessions to their accounts as they are now (docs/billing.md#account-changes) and to their monthly
        budgets (docs/billing.md#budgets): one read of the accounts, one of this month's spending; then record the
        budget thresholds reached (docs/contract.md#account-events)."""
        ended, self._ended_accounts = self._ended_accounts, set()
        live_accounts = {live.account_id for live in self.live.values()}
        if not live_accounts and not ended:
            return
        now = utcnow()
        states = await self.store.account_states(live_accounts) if live_accounts else {}
        self._spend = await self.store.events.month_spend(sorted(live_accounts | ended), now)
        for live in list(self.live.values()):
            self._watch_budget(live)
            state = states.get(live.account_id)
            if state is None:
                continue
            binding = bind(state)
            live.billing.rebill(binding.prepaid)
            if binding.close is not None:
                live.request_close(*binding.close)
        await self._record_thresholds(now)

    def _watch_budget(self, live: LiveSession) -> None:
        """Give ``live`` its account's budget and this month's spending as last read (none: no budget)."""
        spend = self._spend.get(live.account_id)
        if spend is None:
            live.billing.budget.refresh(None, 0, 0)
        else:
            live.billing.budget.refresh(spend.budget_nanos, spend.month_cost_nanos, live.cost_nanos)

    async def _record_thresholds(self, now: datetime) -> None:
        """Record the budget thresholds reached that this process has not recorded yet (another gateway may have: the
        event's id is the occurrence, so it is recorded once)."""
        month = budget.month_label(now)
        if any(m != month for _, m, _ in self._thresholds_recorded):  # a new month: last month's are done
            self._thresholds_recorded = {t for t in self._thresholds_recorded if t[1] == month}
        due: dict[str, MonthSpend] = {}
        for account_id, spend in self._spend.items():
            passed = budget.thresholds_passed(spend.budget_nanos, spend.month_cost_nanos)
            if any((account_id, month, p) not in self._thresholds_recorded for p in passed):
                due[account_id] = spend
        if not due:
            return
        await self.database_write("thresholds", lambda: self.store.events.record_budget_thresholds(due, now))
        for account_id, spend in due.items():
            for p in budget.thresholds_passed(spend.budget_nanos, spend.month_cost_nanos):
                self._thresholds_recorded.add((account_id, month, p))

    async def close_requested(self) -> None:
        """End the live sessions an operator asked to close (docs/admin-api.md#close-a-session): one indexed read of
        the requests not yet served, whichever gateway received them."""
        if not self.live:
            return
        for session_id in await self.store.operator_sessions.close_requests():
            self.close_by_operator(session_id)

    def close_by_operator(self, session_id: str) -> bool:
        """Ask this process's session ``session_id`` to end with 1008 "closed by operator" (the provider ends
        gracefully first); False when it does not run here."""
        live = self.live.get(session_id)
        if live is None:
            return False
        live.request_close(*closecodes.CLOSED_BY_OPERATOR)
        return True

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
