"""The pull task document: what ``GET /api/v2/audio-stream/tasks/{id}`` shows (docs/pull.md#look-at-a-task)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sttgate.admin import isoformat
from sttgate.core.money import CYCLE_SECONDS, format_usd
from sttgate.store.tasks import TaskRow


def redact_url(url: str) -> str:
    """A URL with its password (``rtsp://user:pass@cam``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}"))


def task_document(row: TaskRow) -> dict[str, Any]:
    return {
        "task_id": row.id,
        "provider": row.provider,
        "status": row.status,
        "audio_url": redact_url(row.audio_url),
        "callback_url": row.callback_url,
        "created_at": isoformat(row.created_at),
        "started_at": isoformat(row.started_at),
        "ended_at": isoformat(row.ended_at),
        "stop_requested": row.stop_requested,
        "audio_seconds": round(row.audio_seconds, 3),
        "billed_seconds": row.cycles * CYCLE_SECONDS,
        "cost_usd": format_usd(row.cost_nanos),
        "last_error": row.last_error,
    }
