"""Fixtures for the emulator tests: ``await emu(**EmulatorConfig overrides)`` (an override named after a provider is
that emulator's options, e.g. ``deepgram=DeepgramOptions(max_concurrent=2)``) starts the emulator app on an
ephemeral loopback port and returns an :class:`~tests.support.emulator_client.Emu` with an aiohttp client session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from sttgate.emulators.app import EMULATORS, EmulatorConfig
from tests.support.emulator import running_emulator
from tests.support.emulator_client import Emu


@pytest.fixture
async def emu() -> AsyncIterator[Callable[..., Awaitable[Emu]]]:
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Emu:
            providers = {name: overrides.pop(name) for name in list(overrides) if name in EMULATORS}
            config = EmulatorConfig(**overrides, providers=providers)
            server = await stack.enter_async_context(running_emulator(config, shutdown_timeout=1.0))
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            stack.push_async_callback(http.close)
            return Emu(server.app, server.port, http)

        yield start
