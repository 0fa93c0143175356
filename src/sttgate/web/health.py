"""``/healthz`` and ``/readyz`` (docs/contract.md#health-and-metrics)."""

from __future__ import annotations

from aiohttp import web

from sttgate.core.outage import Readiness, readiness
from sttgate.web.services import SERVICES


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new sessions: not draining, and the database answers and takes writes (a write failed in the last
    ``database_failure_window_seconds``, or a write probe that fails, is 503; docs/operations.md#database-outage)."""
    svc = request.app[SERVICES]
    sessions = svc.sessions
    writable = not sessions.draining and await sessions.writable()
    if writable and not await svc.store.ping():
        writable = False
    status = readiness(draining=sessions.draining, writable=writable)
    return web.json_response({"status": status.value}, status=200 if status is Readiness.READY else 503)
