"""``GET /metrics``: the Prometheus exposition of :class:`~sttgate.gateway.metrics.GatewayMetrics`
(docs/operations.md#metrics)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import generate_latest

from sttgate.web import logfilter
from sttgate.web.services import SERVICES


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition (the app's collectors, then the process's own); live sessions' frame counters are caught
    up first."""
    svc = request.app[SERVICES]
    registry = svc.metrics
    for live in list(svc.sessions.live.values()):
        registry.absorb(live)
    body, content_type = registry.render()
    body += generate_latest(logfilter.REGISTRY)  # per process: parser refusals and early departures
    return web.Response(body=body, headers={"Content-Type": content_type})
