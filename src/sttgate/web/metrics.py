"""``GET /metrics``: the Prometheus exposition of :class:`~sttgate.gateway.metrics.GatewayMetrics`
(docs/operations.md#metrics)."""

from __future__ import annotations

from aiohttp import web

from sttgate.web import logfilter
from sttgate.web.services import SERVICES


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition (the app's collectors, then the process's own; with several workers, all of theirs);
    this process's live sessions' frame counters are caught up first (the other workers' sweeps do theirs)."""
    svc = request.app[SERVICES]
    registry = svc.metrics
    registry.absorb(list(svc.sessions.live.values()))
    # Per process, outside the app: parser refusals and early departures.
    body, content_type = registry.render(also=[logfilter.REGISTRY])
    return web.Response(body=body, headers={"Content-Type": content_type})
