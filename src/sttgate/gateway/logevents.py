"""Structured ``key=value`` log lines for session and task events (one line each, never per frame)."""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("sttgate.gateway")


def log_event(event: str, *, severity: int = logging.INFO, **fields: Any) -> None:
    """One structured ``key=value`` line at ``severity``; values with spaces or quotes are JSON-quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = "" if value is None else str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    log.log(severity, " ".join(parts))
