"""Shared fixtures: a running emulator, a store on a temporary SQLite file, accounts with keys, a running gateway.

Everything runs on real sockets on 127.0.0.1 (ephemeral ports) in the test's own event loop::

    async def test_something(gateway, account):
        gw = await gateway(idle_timeout_seconds=1)          # Settings overrides; points at the emulator
        acct = await account(balance_usd="0.01")             # prepaid; account() is postpaid
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_echo=1") as ws:
            ...
        rec = await gw.emulator.recorder.wait_for_session(provider="assemblyai")

The helpers themselves are in ``tests/support`` (e.g. ``handshake`` in ``tests.support.upgrade``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sttgate.admin import Admin
from sttgate.core.money import usd_to_nanos
from sttgate.providers import names
from sttgate.store import Store
from tests.support.accounts import Account, create_account
from tests.support.emulator import EmulatorServer, running_emulator
from tests.support.gateway import Gateway, gateway_settings, running_gateway


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """Every provider emulator on one ephemeral port, accepting the operator keys."""
    async with running_emulator() as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated store on a fresh SQLite file."""
    s = await Store.connect(f"sqlite:///{tmp_path / 'sttgate.db'}", migrate=True)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def account(store: Store) -> Callable[..., Awaitable[Account]]:
    """Factory: ``await account(balance_usd=None, max_streams=5, streaming_enabled=True)`` → Account(id, key)."""

    async def make(
        *, balance_usd: str | None = None, max_streams: int = 5, streaming_enabled: bool = True, name: str = "test"
    ) -> Account:
        return await create_account(
            store,
            name=name,
            max_streams=max_streams,
            balance_nanos=None if balance_usd is None else usd_to_nanos(balance_usd),
            streaming_enabled=streaming_enabled,
        )

    return make


@pytest.fixture
def admin(store: Store) -> Admin:
    """The store's operations answering with documents, as the CLI and ``/api/v2/usage`` show them."""
    return Admin(store, names())


@pytest.fixture
async def gateway(emulator: EmulatorServer, store: Store) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Factory: ``await gateway(**settings_overrides)`` starts a gateway on the shared store and emulator."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Gateway:
            running = await stack.enter_async_context(running_gateway(gateway_settings(emulator, **overrides), store))
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            stack.push_async_callback(http.close)
            return Gateway(running.app, running.port, running.settings, emulator, http, running.admin_url)

        yield start
