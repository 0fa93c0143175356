"""The access log, without secrets: keys and tokens travel in query strings, so the query is redacted."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from sttgate.core.params import redact_query
from sttgate.gateway.logevents import FIELDS
from sttgate.providers import secret_prefixes


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines with the query string redacted (credential values and provider secrets)."""

    @property
    def enabled(self) -> bool:
        """Whether lines are written at all: aiohttp asks once per connection and, when not, neither times the
        request nor calls :meth:`log` (a handshake then builds no line that the log level would drop)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        path, _, query = request.raw_path.partition("?")
        target = path + ("?" + redact_query(query, secret_prefixes()) if query else "")
        fields = {
            "remote": request.remote,
            "method": request.method,
            "path": target,
            "status": response.status,
            "seconds": round(elapsed, 6),
        }
        self.logger.info(
            '%s "%s %s" %s %.3f',
            request.remote,
            request.method,
            target,
            response.status,
            elapsed,
            extra={FIELDS: fields},  # the JSON format's keys (docs/operations.md#logs)
        )
