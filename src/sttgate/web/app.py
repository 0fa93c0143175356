"""The gateway's aiohttp application: its routes, its refusal middleware and the lifecycle of its services.

Processes (workers, signals, drain) are :mod:`sttgate.process`; this module only builds and starts the app.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sttgate.config import Settings
from sttgate.core import closecodes
from sttgate.gateway.manager import SessionManager
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.gateway.upstream import HandshakeResponse, UpstreamSocket
from sttgate.store import Store
from sttgate.web import demo_page, health, metrics, pull_api, streams, tokens, usage
from sttgate.web.access_log import RedactingAccessLogger
from sttgate.web.errors import render_refusals
from sttgate.web.services import SERVICES, Services


def default_gateway_id(settings: Settings, port: int | None = None, worker: int | None = None) -> str:
    """``settings.gateway_id`` or ``hostname:port`` (plus ``/worker`` when several processes share the port)."""
    base = settings.gateway_id or f"{socket.gethostname()}:{port if port is not None else settings.port}"
    return base if worker is None else f"{base}/{worker}"


def create_app(settings: Settings, *, store: Store | None = None, gateway_id: str | None = None) -> web.Application:
    """The gateway app. Opens (and migrates) the database on start-up unless ``store`` is given.

    Its :class:`~sttgate.web.services.Services` are ``app[SERVICES]``, complete once the app has started.
    """
    app = web.Application(middlewares=[render_refusals])
    svc = Services(settings, GatewayMetrics(), gateway_id or default_gateway_id(settings))
    app[SERVICES] = svc

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        svc.store = store if store is not None else await Store.connect(settings.database_url, migrate=True)
        svc.upstream_http = aiohttp.ClientSession(
            # The default limit of 100 connections would stall the 101st upstream WebSocket.
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout_seconds),
            response_class=HandshakeResponse,
            ws_response_class=UpstreamSocket,
            headers={"User-Agent": "sttgate"},
        )
        manager = SessionManager(settings, svc.store, svc.metrics, svc.gateway_id)
        svc.sessions = manager
        await manager.start()
        try:
            yield
        finally:
            await manager.stop()
            await svc.upstream_http.close()
            if own_store:
                await svc.store.close()

    async def close_sessions(app: web.Application) -> None:
        # Runner clean-up without a drain (tests, a second signal): end live sessions now, with 1012.
        await svc.sessions.close_all(*closecodes.SERVICE_RESTART)
        if svc.relays:
            # Each relay ends its session first, then finishes its close handshakes (bounded by its own timeouts).
            await asyncio.wait(set(svc.relays))

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sessions)
    streams.setup(app)
    health.setup(app)
    metrics.setup(app)
    usage.setup(app)
    tokens.setup(app)
    demo_page.setup(app)
    pull_api.setup(app)
    return app


async def start_site(app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> web.AppRunner:
    """Run ``app`` on ``host:port`` (0 = any free port) with the redacting access log; returns the runner."""
    runner = web.AppRunner(app, handle_signals=False, access_log_class=RedactingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on (useful with port 0)."""
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("the runner is not listening")
