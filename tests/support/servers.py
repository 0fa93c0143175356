"""Any aiohttp app on an ephemeral loopback port, for as long as a ``with`` block lasts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from sttgate.web.app import bound_port

AIOHTTP_SHUTDOWN_TIMEOUT = 60.0  # aiohttp's own default: in-flight handlers may finish


@asynccontextmanager
async def serving(app: web.Application, *, shutdown_timeout: float = AIOHTTP_SHUTDOWN_TIMEOUT) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 (a free port); yields the port, cleans the runner up afterwards."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield bound_port(runner)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_app(app: web.Application, *, shutdown_timeout: float = 0.5) -> AsyncIterator[str]:
    """Run a small test app (media, webhook receivers); yields its base URL ``http://127.0.0.1:PORT``."""
    async with serving(app, shutdown_timeout=shutdown_timeout) as port:
        yield f"http://127.0.0.1:{port}"


def fixed_text(text: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that always answers ``text`` (a coroutine: aiohttp deprecates plain-function handlers)."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type=content_type)

    return handle
