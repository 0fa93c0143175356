"""One middleware renders every refusal, so every route answers them alike.

A handler (or anything it calls: authorization, slot, upstream connect, body parsing) raises a
:class:`~sttgate.core.refusals.Refusal`; this middleware answers it with the refusal's status and the error body of
docs/contract.md#conventions, ``{"error": {"code", "message"}}``, and counts it once in
``sttgate_handshake_refusals_total{code}`` (docs/operations.md#metrics).

Every refusal carries ``Cache-Control: no-store``. The token routes always sent it (an answer about credentials must
not be cached by a proxy); the other routes now send it too, so that a refusal looks the same whichever route gave it.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from sttgate.core.refusals import Refusal, database_unavailable
from sttgate.store import unavailable
from sttgate.web.connections import forget_tracebacks
from sttgate.web.services import SERVICES

REFUSAL_HEADERS = {"Cache-Control": "no-store"}


@web.middleware
async def render_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or its raised :class:`Refusal` as a JSON error response (counted in the metrics)."""
    try:
        return await handler(request)
    except Refusal as refusal:
        # A refusal is an answer, not an error: its traceback's frames hold the request (headers and all) and, through
        # a task that raised it, the refusal itself, a cycle only the rare full collection would free.
        forget_tracebacks(refusal)
        return _render(request, refusal)
    except Exception as exc:
        # A route without a bounded database call of its own (token mints, usage, pull status) still answers a
        # database outage with the JSON refusal, not a plain-text 500 (docs/operations.md#database-outage).
        if not unavailable(exc):
            raise
        request.app[SERVICES].sessions.database_failed()
        return _render(request, database_unavailable())


def _render(request: web.Request, refusal: Refusal) -> web.StreamResponse:
    request.app[SERVICES].metrics.refusals.labels(refusal.code).inc()
    return refusal_response(refusal)


def refusal_response(refusal: Refusal) -> web.Response:
    """``refusal`` as its status and JSON error body, not counted (the admin API renders its own refusals so that
    the handshake refusal metric stays about handshakes)."""
    return web.json_response(refusal.body(), status=refusal.status, headers={**REFUSAL_HEADERS, **refusal.headers})
