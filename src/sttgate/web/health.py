"""``/healthz`` and ``/readyz`` (docs/contract.md#health-and-metrics)."""

from __future__ import annotations

from aiohttp import web

from sttgate.web.services import SERVICES


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new sessions: the database answers and the gateway is not draining."""
    svc = request.app[SERVICES]
    if svc.sessions.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not await svc.store.ping():
        return web.json_response({"status": "database_unavailable"}, status=503)
    return web.json_response({"status": "ready"})
