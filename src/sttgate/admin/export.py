"""The export status document (docs/export.md#status): what ``sttgate export status --json`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sttgate.store import Store


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


async def status_document(store: Store, configured: Mapping[str, str], now: datetime | None = None) -> dict[str, Any]:
    """Every configured sink (name → type) and every sink the database knows: pending events, lag (the age of the
    oldest pending event), events sent, last success, last error, and which gateway holds its lease."""
    now = now or datetime.now(UTC)
    sinks = []
    for s in await store.outbox.status(list(configured)):
        lag = None if s.oldest_pending_at is None else round((now - s.oldest_pending_at).total_seconds(), 3)
        sinks.append(
            {
                "name": s.name,
                "type": configured.get(s.name),
                "pending": s.pending,
                "lag_seconds": lag,
                "oldest_pending_at": _iso(s.oldest_pending_at),
                "sent_total": s.sent_total,
                "last_success_at": _iso(s.last_success_at),
                "last_error": s.last_error,
                "last_error_at": _iso(s.last_error_at),
                "lease_owner": s.lease_owner,
            }
        )
    return {"sinks": sinks}
