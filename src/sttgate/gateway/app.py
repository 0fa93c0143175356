"""The gateway's aiohttp application, and ``serve``: workers, start-up reaping, SIGTERM drain.

``create_app`` builds an app that other route modules can extend (pull, SDK routes): its state is under the typed
keys of :mod:`sttgate.gateway.keys` and is ready once the app has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from sttgate import sdk_routes
from sttgate.admin import usage_document
from sttgate.config import Settings
from sttgate.core import closecodes, refusals
from sttgate.core.params import redact_query
from sttgate.gateway.handshake import audio_stream, credential_from_request, refuse
from sttgate.gateway.keys import GATEWAY_ID, METRICS, SESSIONS, SETTINGS, STORE, UPSTREAM_HTTP
from sttgate.gateway.logevents import log_event
from sttgate.gateway.manager import SessionManager
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.gateway.upstream import HandshakeResponse, UpstreamSocket
from sttgate.providers import names, secret_prefixes
from sttgate.pull import api as pull_api
from sttgate.store import Store

log = logging.getLogger("sttgate.gateway")


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log without secrets: the query string is redacted (keys and tokens travel in it)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        path, _, query = request.raw_path.partition("?")
        target = path + ("?" + redact_query(query, secret_prefixes()) if query else "")
        self.logger.info('%s "%s %s" %s %.3f', request.remote, request.method, target, response.status, elapsed)


def default_gateway_id(settings: Settings, port: int | None = None, worker: int | None = None) -> str:
    """``settings.gateway_id`` or ``hostname:port`` (plus ``/worker`` when several processes share the port)."""
    base = settings.gateway_id or f"{socket.gethostname()}:{port if port is not None else settings.port}"
    return base if worker is None else f"{base}/{worker}"


def create_app(settings: Settings, *, store: Store | None = None, gateway_id: str | None = None) -> web.Application:
    """The gateway app. Opens (and migrates) the database on start-up unless ``store`` is given."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[GATEWAY_ID] = gateway_id or default_gateway_id(settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        app[STORE] = store if store is not None else await Store.connect(settings.database_url, migrate=True)
        app[UPSTREAM_HTTP] = aiohttp.ClientSession(
            # The default limit of 100 connections would stall the 101st upstream WebSocket.
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.upstream_connect_timeout_seconds),
            response_class=HandshakeResponse,
            ws_response_class=UpstreamSocket,
            headers={"User-Agent": "sttgate"},
        )
        manager = SessionManager(settings, app[STORE], app[METRICS], app[GATEWAY_ID])
        app[SESSIONS] = manager
        await manager.start()
        try:
            yield
        finally:
            await manager.stop()
            await app[UPSTREAM_HTTP].close()
            if own_store:
                await app[STORE].close()

    async def close_sessions(app: web.Application) -> None:
        # Runner clean-up without a drain (tests, a second signal): end live sessions now, with 1012.
        await app[SESSIONS].close_all(*closecodes.SERVICE_RESTART)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sessions)
    app.router.add_get("/ws/v2/audio-stream", audio_stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v2/usage", usage)
    sdk_routes.setup(app)
    pull_api.setup(app)
    return app


async def usage(request: web.Request) -> web.Response:
    """``GET /api/v2/usage[?since=…&until=…]``: the SPEC §5 document for the account whose key authenticates.

    An account that may not stream still sees its usage; only the key matters here."""
    key = credential_from_request(request, request.query.get("api_key"))
    if not key:
        return refuse(request.app, refusals.MISSING_API_KEY)
    principal = await request.app[STORE].authenticate(key)
    if principal is None:
        return refuse(request.app, refusals.INVALID_API_KEY)
    try:
        since, until = (_timestamp(request.query.get(name)) for name in ("since", "until"))
    except ValueError as exc:
        return refuse(request.app, refusals.Refusal(400, "invalid_request", str(exc)))
    usage = await request.app[STORE].usage(principal.account_id, since, until)
    return web.json_response(usage_document(usage, names()))


def _timestamp(value: str | None) -> datetime | None:
    """An ISO 8601 date or time; without an offset it is UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"Not an ISO 8601 date or time: {value!r}.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for new sessions: the database answers and the gateway is not draining."""
    if request.app[SESSIONS].draining:
        return web.json_response({"status": "draining"}, status=503)
    if not await request.app[STORE].ping():
        return web.json_response({"status": "database_unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition; live sessions' frame counters are caught up first."""
    registry = request.app[METRICS]
    for live in list(request.app[SESSIONS].live.values()):
        registry.absorb(live)
    body, content_type = registry.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


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


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> int:
    """Run the gateway until SIGTERM/SIGINT, then drain; returns the exit status (0 after a clean drain).

    ``workers > 1`` runs that many processes on one port (``SO_REUSEPORT``); the parent forwards signals.
    """
    _configure_logging(settings)
    asyncio.run(_prepare_database(settings))
    if workers <= 1:
        return _run_worker(settings, host, port, None, False)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(settings, host, port, index), name=f"sttgate-worker-{index}")
        for index in range(workers)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
    return 0 if all(proc.exitcode == 0 for proc in procs) else 1


def _worker_main(settings: Settings, host: str, port: int, index: int) -> None:
    # Signals come from the parent only: a terminal's Ctrl-C to the whole group would otherwise arrive twice
    # (directly and forwarded), and a second signal cuts the drain short.
    os.setpgrp()
    _configure_logging(settings)
    raise SystemExit(_run_worker(settings, host, port, index, True))


def _run_worker(settings: Settings, host: str, port: int, index: int | None, reuse_port: bool) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(_serve_async(settings, host, port, index, reuse_port))
    return uvloop.run(_serve_async(settings, host, port, index, reuse_port))


async def _prepare_database(settings: Settings) -> None:
    """Migrate once, before any worker starts."""
    store = await Store.connect(settings.database_url, migrate=True)
    await store.close()


async def _serve_async(settings: Settings, host: str, port: int, index: int | None, reuse_port: bool) -> int:
    store = await Store.connect(settings.database_url, migrate=False)
    gateway_id = default_gateway_id(settings, port, index)
    # Sessions this gateway id left open when it last died are over: close them (their cycles stay billed).
    reaped = await store.reap_dead_sessions(gateway_id=gateway_id)
    if reaped:
        log_event("sessions_reaped_at_startup", gateway=gateway_id, count=len(reaped))
    app = create_app(settings, store=store, gateway_id=gateway_id)
    runner = await start_site(app, host, port, reuse_port=reuse_port)
    stop = asyncio.Event()

    def on_signal() -> None:
        # The first signal starts the drain; a second one cuts it short.
        if stop.is_set():
            app[SESSIONS].cut_drain()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    orphan_watch = asyncio.create_task(_stop_when_orphaned(stop)) if index is not None else None
    log_event("gateway_listening", gateway=gateway_id, host=host, port=bound_port(runner), pid=os.getpid())
    await stop.wait()
    if orphan_watch is not None:
        orphan_watch.cancel()
    started = time.monotonic()
    await app[SESSIONS].drain(settings.drain_seconds)
    await runner.cleanup()
    await store.close()
    log_event("gateway_stopped", gateway=gateway_id, shutdown_seconds=f"{time.monotonic() - started:.3f}")
    return 0


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose parent died (SIGKILL) drains and exits instead of serving on alone."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            break
    log_event("parent_gone", pid=os.getpid())
    stop.set()


def _configure_logging(settings: Settings) -> None:
    """A plain stderr handler when the embedding program (the CLI) configured none."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(ValueError):
        logging.getLogger("sttgate").setLevel(settings.log_level.upper())
