"""The gateway's aiohttp application: its routes, its refusal middleware and the lifecycle of its services.

Processes (workers, signals, drain) are :mod:`sttgate.process`; this module only builds and starts the app.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sttgate.config import Settings
from sttgate.core import closecodes
from sttgate.export.exporter import Exporter
from sttgate.gateway.manager import SessionManager
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.gateway.tracing import Tracing
from sttgate.gateway.upstream import HandshakeResponse, UpstreamSocket
from sttgate.pull.account_events import AccountEventPoster
from sttgate.store import Store
from sttgate.web import demo_page, health, metrics, pull_api, streams, tokens, usage
from sttgate.web.access_log import RedactingAccessLogger
from sttgate.web.connections import ConnectionLimit, LimitedSite, connection_cap, descriptor_limit
from sttgate.web.errors import render_refusals
from sttgate.web.services import SERVICES, Services


def new_start_id() -> str:
    """A fresh random id for one start of the gateway (8 hex digits): part of every gateway id of that start."""
    return secrets.token_hex(4)


def default_gateway_id(
    settings: Settings, port: int | None = None, worker: int | None = None, start: str | None = None
) -> str:
    """``settings.gateway_id`` or ``hostname:port``, plus ``/worker`` when several processes share the port, plus
    ``#start``: the id of this start (a new one unless given), so that no two processes, even a second ``serve`` on
    the same port or a restart, ever share a gateway id (docs/operations.md#process-identity)."""
    base = settings.gateway_id or f"{socket.gethostname()}:{port if port is not None else settings.port}"
    named = base if worker is None else f"{base}/{worker}"
    return f"{named}#{start or new_start_id()}"


def create_app(
    settings: Settings, *, store: Store | None = None, gateway_id: str | None = None, tracing: Tracing | None = None
) -> web.Application:
    """The gateway app. Opens (and migrates) the database on start-up unless ``store`` is given. Sessions are traced
    with ``tracing``, else as the environment says (``OTEL_EXPORTER_OTLP_ENDPOINT``; docs/operations.md#tracing).

    Its :class:`~sttgate.web.services.Services` are ``app[SERVICES]``, complete once the app has started.
    """
    gateway_metrics = GatewayMetrics()
    connections = ConnectionLimit(connection_cap(settings.max_connections, descriptor_limit()), gateway_metrics)
    app = web.Application(middlewares=[connections.busy_while_handled, render_refusals])
    svc = Services(settings, gateway_metrics, gateway_id or default_gateway_id(settings), connections)
    svc.tracing = tracing if tracing is not None else Tracing.from_environment()
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
        exporter = Exporter(settings, svc.store, svc.metrics, svc.gateway_id)
        await exporter.start()
        try:
            yield
        finally:
            await manager.stop()
            # After the ledger's last writes: their events go out too, as far as the sinks answer.
            await exporter.stop(settings.shutdown_write_seconds)
            await svc.upstream_http.close()
            if own_store:
                await svc.store.close()

    async def close_sessions(app: web.Application) -> None:
        # Runner clean-up without a drain (tests, a second signal): end live sessions now, with 1012.
        await svc.sessions.close_all(*closecodes.SERVICE_RESTART)
        if svc.relays:
            # Each relay ends its session first, then finishes its close handshakes (bounded by its own timeouts).
            await asyncio.wait(set(svc.relays))

    async def account_events(app: web.Application) -> AsyncIterator[None]:
        poster = AccountEventPoster(settings, svc.store, svc.metrics)
        await poster.start()
        try:
            yield
        finally:
            await poster.close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(account_events)
    app.on_shutdown.append(close_sessions)
    streams.setup(app)
    health.setup(app)
    if settings.public_metrics:  # else on the admin listener only (sttgate.web.admin_app)
        metrics.setup(app)
    usage.setup(app)
    tokens.setup(app)
    demo_page.setup(app)
    pull_api.setup(app)
    return app


async def start_site(app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> web.AppRunner:
    """Run ``app`` on ``host:port`` (0 = any free port) with the redacting access log and the bounds of
    docs/operations.md#connections; returns the runner."""
    svc = app[SERVICES]
    settings = svc.settings
    runner = web.AppRunner(app, handle_signals=False, access_log_class=RedactingAccessLogger)
    await runner.setup()
    assert runner.server is not None
    factory = svc.connections.protocol_factory(
        runner.server,
        access_log_class=RedactingAccessLogger,
        # aiohttp's keep-alive timer runs from the start of a connection: it is the request-head timeout.
        keepalive_timeout=settings.request_head_timeout_seconds,
        max_line_size=settings.max_header_field_bytes,
        max_field_size=settings.max_header_field_bytes,
        max_headers=settings.max_headers,
    )
    site = LimitedSite(runner, host, port, factory, reuse_port=reuse_port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on (useful with port 0)."""
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("the runner is not listening")
