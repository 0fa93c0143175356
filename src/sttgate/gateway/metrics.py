"""Prometheus metrics of one gateway process, in a registry of its own (one per app, so tests stay isolated).

Per-frame counts never touch a Prometheus object: sessions keep plain ints and the session manager's periodic
sweep (and the session's end) adds the difference since the last report with :meth:`GatewayMetrics.absorb`.

With several worker processes (``serve --workers N``) the metrics are prometheus-client's multiprocess mode
(docs/operations.md#several-workers): the parent gives the workers a fresh directory in ``PROMETHEUS_MULTIPROC_DIR``
(:func:`shared_directory`), each worker's values live in memory-mapped files there, and whichever worker answers a
scrape reads them all; the process figures of every live worker (:func:`register_worker`) are read from ``/proc``
and labelled by ``pid``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from sttgate.core.money import NANOS_PER_USD

# prometheus-client reads it when it is first imported: set before a worker starts, it selects multiprocess mode.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Beside the value files (which end in .db): one empty file per live worker, named by its pid.
_WORKERS = "workers"

TO_PROVIDER = "client_to_provider"
TO_CLIENT = "provider_to_client"

_CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FrameCounts(Protocol):
    """What :meth:`GatewayMetrics.absorb` reads from a session: running totals and what was already reported."""

    provider_name: str
    frames_up: int
    bytes_up: int
    frames_down: int
    bytes_down: int
    reported: list[int]


class GatewayMetrics:
    """Every collector of docs/operations.md#metrics, bound to a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # What a scrape renders: this registry and the process's own figures, or in multiprocess mode every worker's.
        exposition = _multiprocess_exposition()
        if exposition is None:
            ProcessCollector(registry=r)
            exposition = r
        self._exposition = exposition
        # Gauges: multiprocess_mode says how the workers' values combine (livesum: over the live workers).
        self.sessions_open = Gauge(
            "sttgate_sessions_open",
            "Live sessions, by provider.",
            ["provider"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.sessions_ended = Counter(
            "sttgate_sessions_ended", "Ended sessions, by who closed and close code.", ["closed_by", "code"], registry=r
        )
        self.frames = Counter(
            "sttgate_frames", "Data frames relayed, by direction.", ["provider", "direction"], registry=r
        )
        self.bytes = Counter(
            "sttgate_bytes", "Payload bytes relayed, by direction.", ["provider", "direction"], registry=r
        )
        self.cycles = Counter("sttgate_cycles_billed", "5-second cycles billed.", ["provider"], registry=r)
        self.billed_usd = Counter(
            "sttgate_billed_usd", "USD billed (informational; the ledger is exact).", ["provider"], registry=r
        )
        self.refusals = Counter(
            "sttgate_handshake_refusals", "Handshakes refused, by error code.", ["code"], registry=r
        )
        self.upstream_connect = Histogram(
            "sttgate_upstream_connect_seconds",
            "Time from upstream connect start to the provider's 101.",
            ["provider"],
            buckets=_CONNECT_BUCKETS,
            registry=r,
        )
        self.upstream_connect_failures = Counter(
            "sttgate_upstream_connect_failures",
            "Provider connections that failed, by reason (dns, refused, tls, status, timeout, network).",
            ["provider", "reason"],
            registry=r,
        )
        self.upstream_auth_errors = Counter(
            "sttgate_upstream_auth_errors",
            "Provider sessions whose first message refused the operator's credentials or account, in-band.",
            ["provider"],
            registry=r,
        )
        self.reconciliation_mismatches = Counter(
            "sttgate_reconciliation_mismatches",
            "Sessions whose audio as the provider reported it differs from the gateway's by more than 1 s.",
            ["provider"],
            registry=r,
        )
        self.background_errors = Counter(
            "sttgate_background_errors", "Failures of periodic ledger/lease work, by task.", ["task"], registry=r
        )
        self.pending_ends = Gauge(
            "sttgate_pending_session_ends",
            "Ended sessions whose final totals wait in memory for the database (docs/operations.md#database-outage).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ends_given_up = Counter(
            "sttgate_session_ends_given_up",
            "Ended sessions whose final totals could not be written and were logged instead (bound or shutdown).",
            registry=r,
        )
        self.database_write_failures = Counter(
            "sttgate_database_write_failures", "Failed or timed-out database writes of the gateway.", registry=r
        )
        self.account_event_posts = Counter(
            "sttgate_account_event_posts",
            "Account-event posts to accounts' webhook URLs, by outcome (delivered, failed: retried later).",
            ["outcome"],
            registry=r,
        )
        self.draining = Gauge(
            "sttgate_draining", "1 while the gateway drains for shutdown.", registry=r, multiprocess_mode="livemax"
        )
        self.connections_open = Gauge(
            "sttgate_connections_open",
            "Open client connections of the public listener.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connection_limit = Gauge(
            "sttgate_connection_limit",
            "The cap on open client connections (operations.md#connections).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_shed = Counter(
            "sttgate_connections_shed",
            "Connections closed at the cap: an idle one pushed out for a new one (idle_closed), or the new one.",
            ["why"],
            registry=r,
        )
        # Usage export (docs/export.md), by [[export]] sink; updated by the process holding the sink's lease.
        self.export_lag = Gauge(
            "sttgate_export_lag_seconds",
            "Age of the oldest usage event the sink has not accepted yet (0: none pending).",
            ["sink"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.export_failures = Counter(
            "sttgate_export_failures", "Failed sends of usage events to the sink.", ["sink"], registry=r
        )
        self.export_events = Counter(
            "sttgate_export_events", "Usage events the sink accepted (re-sends counted again).", ["sink"], registry=r
        )
        self._frame_children: dict[str, tuple[Counter, Counter, Counter, Counter]] = {}
        self._billed_children: dict[str, tuple[Counter, Counter]] = {}

    @property
    def multiprocess(self) -> bool:
        """Whether a scrape reports every worker of a ``serve --workers N`` (prometheus-client's multiprocess mode)."""
        return self._exposition is not self.registry

    def render(self, also: Iterable[CollectorRegistry] = ()) -> tuple[bytes, str]:
        """The exposition body and its content type. ``also``: registries of this process outside the app, whose
        values in multiprocess mode are in the shared files already (so they are not rendered twice)."""
        body = generate_latest(self._exposition)
        if not self.multiprocess:
            body += b"".join(generate_latest(registry) for registry in also)
        return body, CONTENT_TYPE_LATEST

    def billed(self, provider: str, cycles: int, cost_nanos: int) -> None:
        """Called once per charged cycle batch (every 5 s of audio per session), never per frame; the labelled
        counters are looked up once per provider (``labels()`` takes a lock and builds a key every time)."""
        children = self._billed_children.get(provider)
        if children is None:
            children = (self.cycles.labels(provider), self.billed_usd.labels(provider))
            self._billed_children[provider] = children
        children[0].inc(cycles)
        children[1].inc(cost_nanos / NANOS_PER_USD)

    def absorb(self, sessions: Iterable[FrameCounts]) -> None:
        """Add the sessions' frame and byte counts since their last report: summed per provider first, so a sweep of
        many sessions is one increment per counter and provider (each takes a lock), not four per session."""
        added: dict[str, list[int]] = {}
        for s in sessions:
            now = [s.frames_up, s.bytes_up, s.frames_down, s.bytes_down]
            prev = s.reported
            if now == prev:
                continue
            total = added.get(s.provider_name)
            if total is None:
                total = added[s.provider_name] = [0, 0, 0, 0]
            for i in range(4):
                total[i] += now[i] - prev[i]
            s.reported = now
        for provider, total in added.items():
            for child, amount in zip(self._frame_counters(provider), total, strict=True):
                if amount:
                    child.inc(amount)

    def _frame_counters(self, provider: str) -> tuple[Counter, Counter, Counter, Counter]:
        children = self._frame_children.get(provider)
        if children is None:
            children = (
                self.frames.labels(provider, TO_PROVIDER),
                self.bytes.labels(provider, TO_PROVIDER),
                self.frames.labels(provider, TO_CLIENT),
                self.bytes.labels(provider, TO_CLIENT),
            )
            self._frame_children[provider] = children
        return children


def _multiprocess_exposition() -> CollectorRegistry | None:
    """In multiprocess mode, a registry that reads every worker's values and process figures; else None."""
    path = os.environ.get(MULTIPROC_DIR)
    if not path:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    registry.register(WorkerProcesses(lambda: live_workers(path)))
    return registry


class WorkerProcesses(Collector):
    """The ``process_*`` figures (CPU, memory, file descriptors, start time) of several processes, labelled by
    ``pid``: prometheus-client's own process collector reports only the process that answers the scrape."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self._pids():
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():  # type: ignore[misc]
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for the workers of one ``serve`` start, set in this process's environment
    (which the workers inherit) and removed with its files at the end: values of an earlier start never leak in."""
    path = Path(tempfile.mkdtemp(prefix="sttgate-metrics-"))
    (path / _WORKERS).mkdir()
    before = os.environ.get(MULTIPROC_DIR)
    os.environ[MULTIPROC_DIR] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_DIR, None)
        else:
            os.environ[MULTIPROC_DIR] = before
        shutil.rmtree(path, ignore_errors=True)


def register_worker(path: Path, pid: int) -> None:
    """Count ``pid`` among the live workers whose process figures a scrape reports."""
    (path / _WORKERS / str(pid)).touch()


def worker_exited(path: Path, pid: int) -> None:
    """A worker is gone: its live gauges (open sessions, pending ends, draining) stop counting; its counters and
    histograms stay in the totals, as counters must."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    (path / _WORKERS / str(pid)).unlink(missing_ok=True)


def live_workers(path: str) -> list[int]:
    """The pids :func:`register_worker` recorded and :func:`worker_exited` has not removed."""
    try:
        names = os.listdir(os.path.join(path, _WORKERS))
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())
