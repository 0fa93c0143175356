"""Structured log lines for session and task events (one line each, never per frame), written as ``key=value`` text or,
with ``STTGATE_LOG_FORMAT=json``, as one JSON object per line (:class:`JsonFormatter`; docs/operations.md#logs).

A record made by :func:`log_event` carries its event and fields as attributes (:data:`EVENT`, :data:`FIELDS`) beside
its text, so the JSON form has them as keys instead of a string to parse again; the redaction filter
(``sttgate.web.logfilter``) cleans both.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("sttgate.gateway")

# Record attributes: the event name, and its fields (a dict; also on records that are not events, e.g. access lines).
EVENT = "sttgate_event"
FIELDS = "sttgate_fields"
# The text format of ``serve`` (when the embedding program configured no logging of its own).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


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
    if log.isEnabledFor(level):
        log.log(level, format_event(event, **fields), extra={EVENT: event, FIELDS: fields})


# Keys of every JSON line; a field of the same name is written as ``field_<name>``.
_RESERVED = frozenset({"time", "level", "logger", "message", "event", "exc", "stack"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, then an event's
    ``event`` and fields as keys, or the ``message`` of any other record (aiohttp's, the database's), plus ``exc``
    and ``stack`` when the record has them. Numbers and booleans stay JSON numbers and booleans; anything else is its
    text."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        event = getattr(record, EVENT, None)
        if event:
            doc["event"] = event
        else:
            doc["message"] = record.getMessage()
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                doc[f"field_{key}" if key in _RESERVED else key] = _json_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)
