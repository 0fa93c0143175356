"""Process supervision: ``serve`` runs the gateway app of :func:`sttgate.web.app.create_app` in one or more
processes until SIGTERM/SIGINT, then drains (docs/operations.md#shutdown-sigterm).

Here: logging set-up, migrating once before workers start, workers sharing one port (``SO_REUSEPORT``) with the
parent forwarding signals, each start's own gateway ids, reaping at start-up the sessions whose lease expired, the
orphan watch, the admin listener (docs/operations.md#admin-listener) and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

from sttgate.config import Settings
from sttgate.core.redaction import Redactor
from sttgate.gateway.logevents import TEXT_FORMAT, JsonFormatter, log_event
from sttgate.gateway.metrics import register_worker, shared_directory, worker_exited
from sttgate.providers import names, secret_prefixes
from sttgate.store import Store
from sttgate.web.admin_app import build_admin_app
from sttgate.web.app import bound_port, create_app, default_gateway_id, new_start_id, start_site
from sttgate.web.connections import raise_descriptor_limit
from sttgate.web.logfilter import LogHygiene
from sttgate.web.services import SERVICES


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> int:
    """Run the gateway until SIGTERM/SIGINT, then drain; returns the exit status (0 after a clean drain).

    ``workers > 1`` runs that many processes on one port (``SO_REUSEPORT``); the parent forwards signals.
    """
    configure_logging(settings)
    asyncio.run(_prepare_database(settings))
    start = new_start_id()  # shared by this start's workers: their ids differ by index, and from any other start's
    if workers <= 1:
        return _run_worker(settings, host, port, _Identity(None, start), False)
    # One scrape of any worker reports them all: prometheus-client's multiprocess mode, in a directory of this start.
    with shared_directory() as metrics_dir:
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(
                target=_worker_main,
                args=(settings, host, port, _Identity(index, start)),
                name=f"sttgate-worker-{index}",
            )
            for index in range(workers)
        ]
        for proc in procs:
            proc.start()
            register_worker(metrics_dir, _pid(proc))

        def forward(signum: int, _frame: Any) -> None:
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        running = {proc.sentinel: proc for proc in procs}
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc = running.pop(cast(int, sentinel))
                proc.join()
                worker_exited(metrics_dir, _pid(proc))  # its open sessions no longer count
    return 0 if all(proc.exitcode == 0 for proc in procs) else 1


def _pid(proc: multiprocessing.process.BaseProcess) -> int:
    assert proc.pid is not None, "a started process has a pid"
    return proc.pid


def check_listen(host: str, port: int, *, reuse_port: bool = False) -> None:
    """Raise ``OSError`` when ``host:port`` cannot be listened on: a host that does not resolve or is not local, a
    port in use. Checked before anything starts, so the CLI can say so in one line instead of a worker's traceback.

    With ``reuse_port`` (several workers) a port other ``SO_REUSEPORT`` listeners of this user hold is not "in use".
    """
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)


@dataclass(frozen=True)
class _Identity:
    """Which process of which start: the worker index (None for a single process) and the start's random id."""

    index: int | None
    start: str


def _worker_main(settings: Settings, host: str, port: int, identity: _Identity) -> None:
    # Signals come from the parent only: a terminal's Ctrl-C to the whole group would otherwise arrive twice
    # (directly and forwarded), and a second signal cuts the drain short.
    os.setpgrp()
    configure_logging(settings)
    raise SystemExit(_run_worker(settings, host, port, identity, True))


def _run_worker(settings: Settings, host: str, port: int, identity: _Identity, reuse_port: bool) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(_serve_async(settings, host, port, identity, reuse_port))
    return uvloop.run(_serve_async(settings, host, port, identity, reuse_port))


async def _prepare_database(settings: Settings) -> None:
    """Migrate once, before any worker starts."""
    store = await Store.connect(settings.database_url, migrate=True)
    await store.close()


async def _serve_async(settings: Settings, host: str, port: int, identity: _Identity, reuse_port: bool) -> int:
    descriptors = raise_descriptor_limit()  # before the app derives its connection cap from it
    store = await Store.connect(settings.database_url, migrate=False)
    gateway_id = default_gateway_id(settings, port, identity.index, identity.start)
    # Sessions whose lease expired are over (their cycles stay billed). Only those: a session another live process
    # renews (an instance still running on this port, during a restart) is not this process's to close.
    reaped = await store.reap_dead_sessions()
    if reaped:
        log_event("sessions_reaped_at_startup", gateway=gateway_id, count=len(reaped))
    app = create_app(settings, store=store, gateway_id=gateway_id)
    runner = await start_site(app, host, port, reuse_port=reuse_port)
    sessions = app[SERVICES].sessions
    # Every worker serves the admin listener too, on the same port (SO_REUSEPORT like the public one): any of them
    # answers a scrape with all workers' metrics (docs/operations.md#several-workers).
    admin_runner = None
    if settings.admin_port:
        admin_app = build_admin_app(app[SERVICES])
        admin_runner = await start_site(admin_app, settings.admin_host, settings.admin_port, reuse_port=reuse_port)
    stop = asyncio.Event()

    def on_signal() -> None:
        # The first signal starts the drain; a second one cuts it short.
        if stop.is_set():
            sessions.cut_drain()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    orphan_watch = asyncio.create_task(_stop_when_orphaned(stop)) if identity.index is not None else None
    # What exists now (modules, the app, the store's engine) lives as long as the process: the cyclic garbage collector
    # stops traversing it, so a full collection walks the live sessions' objects only, not some hundred thousand
    # others (docs/benchmarks.md: such collections were most of the p99.9 added latency under load).
    gc.collect()
    gc.freeze()
    log_event(
        "gateway_listening",
        gateway=gateway_id,
        host=host,
        port=bound_port(runner),
        pid=os.getpid(),
        max_connections=app[SERVICES].connections.cap,
        descriptors=descriptors,
    )
    if admin_runner is not None:
        log_event("admin_listening", gateway=gateway_id, host=settings.admin_host, port=bound_port(admin_runner))
    await stop.wait()
    if orphan_watch is not None:
        orphan_watch.cancel()
    started = time.monotonic()
    await sessions.drain(settings.drain_seconds)
    if admin_runner is not None:  # it only borrows the public app's services
        await admin_runner.cleanup()
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


def configure_logging(settings: Settings) -> None:
    """A plain stderr handler when the embedding program (the CLI) configured none, and on every root handler the
    filter that keeps secrets and parser tracebacks out of the log (:class:`~sttgate.web.logfilter.LogHygiene`) and,
    with ``STTGATE_LOG_FORMAT=json``, the JSON formatter."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=settings.log_level.upper(), format=TEXT_FORMAT)
    if settings.log_format == "json":  # every record of every logger, one JSON object per line
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    with contextlib.suppress(ValueError):
        logging.getLogger("sttgate").setLevel(settings.log_level.upper())
    hygiene = LogHygiene(Redactor(secret_prefixes(), _known_secrets(settings)))
    for handler in root.handlers:
        if not any(isinstance(f, LogHygiene) for f in handler.filters):
            handler.addFilter(hygiene)


def _known_secrets(settings: Settings) -> list[str]:
    """The secrets this process holds, redacted wherever a log line would quote them."""
    keys = [settings.provider(name).api_key.get_secret_value() for name in names()]
    sinks = [sink.api_key.get_secret_value() for sink in settings.export]  # usage export (docs/export.md)
    return [*keys, *sinks, settings.demo_api_key.get_secret_value()]
