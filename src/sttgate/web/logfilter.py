"""The one filter every log record of the process passes (docs/operations.md#logs): no secret, no parser tracebacks.

:func:`sttgate.process.serve` puts a :class:`LogHygiene` on the root logger's handlers, so it sees the records of
every logger (aiohttp's included) once they are about to be written:

- aiohttp's "Error handling request" for a request its HTTP parser refused (a raw space or accented letter in the
  query, a control character, a bad HTTP version, a bad header character) or for a client that left before its
  answer becomes ONE ``WARNING`` line (``event=malformed_request`` / ``event=client_gone``) without traceback, and
  is counted in ``sttgate_bad_requests_total{kind}``: anyone can send these, so they must not flood the log with
  ERROR tracebacks, and aiohttp's traceback quotes the whole request line or header, credentials included;
- every record's message, traceback and stack, and the structured fields the JSON format writes, are passed through
  a :class:`~sttgate.core.redaction.Redactor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter

from sttgate.core.redaction import Redactor
from sttgate.gateway.logevents import EVENT, FIELDS, format_event

# Counted per process, whatever app the connection belonged to; /metrics adds this registry to the app's own.
REGISTRY = CollectorRegistry(auto_describe=True)
BAD_REQUESTS = Counter(
    "sttgate_bad_requests",
    "Requests refused by the HTTP parser (kind=malformed) or left by the client before the answer (kind=client_gone).",
    ["kind"],
    registry=REGISTRY,
)
MALFORMED = "malformed"
CLIENT_GONE = "client_gone"

_AIOHTTP_ERROR = "Error handling request"
_SEEN = "_sttgate_clean"
_REASON_MAX = 160


def count_bad_request(kind: str) -> None:
    BAD_REQUESTS.labels(kind).inc()


def parser_reason(exc: HttpProcessingError) -> str:
    """The parser's explanation without the request bytes it quotes (``Bad status line: Invalid HTTP version``)."""
    words: list[str] = []
    for line in str(exc.message).splitlines():
        line = line.strip()
        if line.startswith(("b'", 'b"', "^")):
            break
        if line:
            words.append(line.rstrip(":"))
    return ": ".join(words)[:_REASON_MAX] or type(exc).__name__


class LogHygiene(logging.Filter):
    """Demotes parser errors and early departures to one counted WARNING line; redacts every record (in place, once,
    however many handlers it passes)."""

    def __init__(self, redact: Redactor, count: Callable[[str], None] = count_bad_request) -> None:
        super().__init__()
        self._redact = redact
        self._count = count

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SEEN, False):
            return True
        setattr(record, _SEEN, True)
        self._demote(record)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not stop the line (logging would only report it)
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self._redact(message)
        record.args = None
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):  # what the JSON format writes instead of the message
            setattr(record, FIELDS, {key: self._redact_value(value) for key, value in fields.items()})
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True

    def _redact_value(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        return self._redact(str(value))

    def _demote(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if not (record.name.startswith("aiohttp.") and str(record.msg).startswith(_AIOHTTP_ERROR)):
            return
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        fields: dict[str, Any] = {"remote": remote, "error": type(exc).__name__}
        if isinstance(exc, HttpProcessingError):
            kind, event = MALFORMED, "malformed_request"
            fields["reason"] = parser_reason(exc)
        elif isinstance(exc, ConnectionError):
            kind, event = CLIENT_GONE, "client_gone"
        else:
            return
        self._count(kind)
        record.msg, record.args = format_event(event, **fields), None
        setattr(record, EVENT, event)
        setattr(record, FIELDS, fields)
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.exc_info, record.exc_text = None, None
