"""Structured ``key=value`` log lines for session and task events (one line each, never per frame)."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("sttgate.gateway")


def format_event(event: str, **fields: Any) -> str:
    """One structured ``key=value`` line; values with spaces or quotes are JSON-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = "" if value is None else str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log :func:`format_event` on ``sttgate.gateway`` (INFO unless ``level`` says otherwise)."""
    log.log(level, format_event(event, **fields))
