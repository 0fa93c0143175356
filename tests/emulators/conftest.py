"""Fixtures for the emulator tests: ``await emu(**EmulatorConfig overrides)`` starts the emulator app on an
ephemeral loopback port and returns an :class:`~.helpers.Emu` with an aiohttp client session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sttgate.emulators.app import EmulatorConfig, create_app

from .helpers import Emu


@pytest.fixture
async def emu() -> AsyncIterator[Callable[..., Awaitable[Emu]]]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Emu:
        app = create_app(EmulatorConfig(**overrides))
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sessions.append(http)
        return Emu(app, port, http)

    try:
        yield start
    finally:
        for http in sessions:
            await http.close()
        for runner in runners:
            await runner.cleanup()
