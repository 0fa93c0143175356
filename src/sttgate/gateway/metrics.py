"""Prometheus metrics of one gateway process, in a registry of its own (one per app, so tests stay isolated).

Per-frame counts never touch a Prometheus object: sessions keep plain ints and the session manager's periodic
sweep (and the session's end) adds the difference since the last report with :meth:`GatewayMetrics.absorb`.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sttgate.core.money import NANOS_PER_USD

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
        self.sessions_open = Gauge("sttgate_sessions_open", "Live sessions, by provider.", ["provider"], registry=r)
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
        self.draining = Gauge("sttgate_draining", "1 while the gateway drains for shutdown.", registry=r)
        self.connections_open = Gauge(
            "sttgate_connections_open", "Open client connections of the public listener.", registry=r
        )
        self.connection_limit = Gauge(
            "sttgate_connection_limit", "The cap on open client connections (operations.md#connections).", registry=r
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
        )
        self.export_failures = Counter(
            "sttgate_export_failures", "Failed sends of usage events to the sink.", ["sink"], registry=r
        )
        self.export_events = Counter(
            "sttgate_export_events", "Usage events the sink accepted (re-sends counted again).", ["sink"], registry=r
        )
        self._frame_children: dict[str, tuple[Counter, Counter, Counter, Counter]] = {}

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def billed(self, provider: str, cycles: int, cost_nanos: int) -> None:
        """Called once per charged cycle batch (every 5 s of audio), never per frame."""
        self.cycles.labels(provider).inc(cycles)
        self.billed_usd.labels(provider).inc(cost_nanos / NANOS_PER_USD)

    def absorb(self, s: FrameCounts) -> None:
        """Add a session's frame and byte counts since its last report."""
        now = [s.frames_up, s.bytes_up, s.frames_down, s.bytes_down]
        prev = s.reported
        if now == prev:
            return
        children = self._frame_children.get(s.provider_name)
        if children is None:
            p = s.provider_name
            children = (
                self.frames.labels(p, TO_PROVIDER),
                self.bytes.labels(p, TO_PROVIDER),
                self.frames.labels(p, TO_CLIENT),
                self.bytes.labels(p, TO_CLIENT),
            )
            self._frame_children[p] = children
        for child, current, before in zip(children, now, prev, strict=True):
            if current != before:
                child.inc(current - before)
        s.reported = now
