"""This process's exporters: one task per ``[[export]]`` sink, sending the usage outbox (docs/export.md).

A task takes its sink's lease (only one process of all gateways on the database holds it at a time), reads the
sink's pending events oldest first, sends them as a batch, and marks what the sink accepted; a failure is retried
after a backoff with jitter, from the first event not accepted, so delivery is at least once and in order within each
session. The tasks only read and write the outbox's own rows, in transactions of their own: a slow or failing sink
never delays a session. At shutdown, after the ledger's last writes, :meth:`Exporter.stop` sends what is left for as
long as the sinks answer (bounded), then gives the leases up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime

from sttgate.config import Settings
from sttgate.core.usage_events import RetryPolicy
from sttgate.export.sinks import Sink, SinkError, make_sink
from sttgate.gateway.logevents import log_event
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.store import Store

log = logging.getLogger("sttgate.export")


class Exporter:
    """The export tasks of one gateway process."""

    def __init__(self, settings: Settings, store: Store, metrics: GatewayMetrics, owner: str) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.owner = owner  # the lease holder's name: the gateway id
        self._sinks: list[Sink] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._rng = random.Random()

    async def start(self) -> None:
        """Register the configured sinks (new events are pending for each) and start their tasks."""
        configs = self.settings.export
        await self.store.outbox.register_sinks([c.name for c in configs])
        self._sinks = [make_sink(c) for c in configs]
        self._tasks = [asyncio.create_task(self._run(sink), name=f"export {sink.config.name}") for sink in self._sinks]

    async def stop(self, seconds: float) -> None:
        """Stop the tasks, then send what is pending for at most ``seconds`` (until a sink fails), and release."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for sink in self._sinks:
            name = sink.config.name
            with contextlib.suppress(Exception):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    while await self._round(sink):
                        pass
            lag: float | None = None
            with contextlib.suppress(Exception):
                await self.store.outbox.release(name, self.owner)
                lag = await self._lag(sink)
            log_event("export_stopped", sink=name, lag_seconds=None if lag is None else f"{lag:.3f}")
            await sink.close()
        self._sinks = []

    async def _run(self, sink: Sink) -> None:
        config = sink.config
        policy = RetryPolicy(config.backoff_seconds, config.backoff_max_seconds)
        failures = 0
        while not self._stopping.is_set():
            try:
                more = await self._round(sink)
            except Exception as exc:  # the sink refused, or the database is away: retried after the backoff
                failures += 1
                if not isinstance(exc, SinkError):
                    self.metrics.background_errors.labels(f"export {config.name}").inc()
                log_event(
                    "export_failed",
                    level=logging.WARNING,
                    sink=config.name,
                    failures=failures,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self._pause(policy.delay(failures, self._rng))
                continue
            failures = 0
            if not more:
                await self._pause(self.settings.export_poll_seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _round(self, sink: Sink) -> bool:
        """One batch, when this process holds the sink's lease; True when it sent some (more may be pending)."""
        outbox = self.store.outbox
        name = sink.config.name
        await self._lag(sink)
        if not await outbox.claim(name, self.owner, self.settings.export_lease_seconds):
            return False
        events = await outbox.pending(name, sink.config.batch_size, linked_only=sink.needs_external_id)
        if not events:
            return False
        try:
            accepted = await sink.send(events)
        except SinkError as exc:
            self.metrics.export_failures.labels(name).inc()
            if exc.accepted:
                await self._delivered(sink, [e.seq for e in events[: exc.accepted]])
            await outbox.failed(name, str(exc))
            raise
        await self._delivered(sink, [e.seq for e in events[:accepted]])
        return True

    async def _delivered(self, sink: Sink, seqs: list[int]) -> None:
        await self.store.outbox.delivered(sink.config.name, seqs)
        self.metrics.export_events.labels(sink.config.name).inc(len(seqs))

    async def _lag(self, sink: Sink) -> float | None:
        """Refresh the sink's lag gauge: the age of its oldest pending event (0 when none); None when nothing is
        pending."""
        oldest = await self.store.outbox.oldest_pending(sink.config.name)
        lag = None if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        self.metrics.export_lag.labels(sink.config.name).set(lag or 0.0)
        return lag
