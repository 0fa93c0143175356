"""A gateway with the SDK routes, pointed at the in-process emulators, on real loopback sockets."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sttgate.store import Store
from tests.support.accounts import create_account
from tests.support.emulator import running_emulator
from tests.support.gateway import AccountGateway, gateway_settings, running_gateway
from tests.support.tls import self_signed_certificate


@pytest.fixture
async def sdk_gateway(store: Store, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[AccountGateway]]]:
    """Factory: ``await sdk_gateway(balance_nanos=None, tls=False, **settings)``: an emulator and a gateway on the
    shared store, and an account of its own."""
    async with AsyncExitStack() as stack:

        async def start(*, balance_nanos: int | None = None, tls: bool = False, **overrides: Any) -> AccountGateway:
            emulator = await stack.enter_async_context(running_emulator())
            account = await create_account(store, name="sdk", balance_nanos=balance_nanos)
            settings = gateway_settings(emulator, gateway_id="sdk-tests", **overrides)
            running = await stack.enter_async_context(running_gateway(settings, store))
            gw = AccountGateway(running.http_url, store, settings, account.id, account.key, emulator.recorder)
            if tls:
                gw.cert_file, key_file = self_signed_certificate(tmp_path)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(gw.cert_file, key_file)
                await web.TCPSite(running.runner, "127.0.0.1", 0, ssl_context=context).start()
                gw.tls_host = f"127.0.0.1:{running.runner.addresses[-1][1]}"  # the site just added
            return gw

        yield start
