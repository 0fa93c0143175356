"""Shared fixtures: a running emulator, a store on a temporary SQLite file, accounts with keys, a running gateway.

Everything runs on real sockets on 127.0.0.1 (ephemeral ports) in the test's own event loop::

    async def test_something(gateway, account):
        gw = await gateway(idle_timeout_seconds=1)          # Settings overrides; points at the emulator
        acct = await account(balance_usd="0.01")             # prepaid; account() is postpaid
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_echo=1") as ws:
            ...
        rec = await gw.emulator.recorder.wait_for_session(provider="assemblyai")

``handshake(url, headers)`` performs an upgrade request without aiohttp's WebSocket client, which drops the body of
a refusal: it returns the status, the JSON body (or None) and the response headers.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from sttgate.admin import Admin
from sttgate.config import Settings
from sttgate.core.money import usd_to_nanos
from sttgate.emulators.app import RECORDER, EmulatorConfig
from sttgate.emulators.app import create_app as create_emulator_app
from sttgate.emulators.recorder import Recorder
from sttgate.gateway.app import bound_port, create_app, start_site
from sttgate.providers import names
from sttgate.store import Store

# The operator's provider keys, as configured in both the emulator and the gateway.
OPERATOR_ELEVENLABS_KEY = "op-elevenlabs-key-for-tests"
OPERATOR_ASSEMBLYAI_KEY = "op-assemblyai-key-for-tests"


@dataclass
class EmulatorServer:
    """A running emulator app: ``base`` is ``ws://127.0.0.1:PORT``; ``recorder`` holds what it received."""

    app: web.Application
    port: int

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def recorder(self) -> Recorder:
        return self.app[RECORDER]

    @property
    def elevenlabs_url(self) -> str:
        return f"{self.base}/v1/speech-to-text/realtime"

    @property
    def assemblyai_url(self) -> str:
        return f"{self.base}/v3/ws"


@dataclass
class Account:
    id: str
    key: str


@dataclass
class Gateway:
    """A running gateway app (see :func:`gateway`)."""

    app: web.Application
    port: int
    settings: Settings
    emulator: EmulatorServer
    http: aiohttp.ClientSession

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, query: str = "") -> URL:
        """The push endpoint with ``query`` sent byte for byte (a plain string would be re-quoted by yarl)."""
        return URL(f"{self.http_url}/ws/v2/audio-stream" + (f"?{query}" if query else ""), encoded=True)

    def stream_query(self, provider: str | None, key: str | None, params: str = "") -> str:
        parts = [p for p in (f"provider={provider}" if provider else "", f"api_key={key}" if key else "", params) if p]
        return "&".join(parts)

    def connect(
        self, provider: str, key: str | None, params: str = "", **kwargs: Any
    ) -> aiohttp.client._WSRequestContextManager:
        """An upgraded client WebSocket through the gateway (no compression, like the SDKs should)."""
        kwargs.setdefault("max_msg_size", 0)
        return self.http.ws_connect(self.ws_url(self.stream_query(provider, key, params)), **kwargs)


async def handshake(url: str | URL, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """An HTTP upgrade request; returns ``(status, json body or None, headers)`` and closes the connection."""
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={**upgrade, **(headers or {})}) as resp,
    ):
        body = None
        if resp.status != 101:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
        return resp.status, body, dict(resp.headers)


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """Both provider emulators on one ephemeral port, accepting the operator keys above."""
    app = create_emulator_app(
        EmulatorConfig(
            elevenlabs_api_keys=(OPERATOR_ELEVENLABS_KEY,),
            assemblyai_api_keys=(OPERATOR_ASSEMBLYAI_KEY,),
        )
    )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield EmulatorServer(app, bound_port(runner))
    finally:
        await runner.cleanup()


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
        created = await store.create_account(
            name=name,
            max_streams=max_streams,
            balance_nanos=None if balance_usd is None else usd_to_nanos(balance_usd),
            streaming_enabled=streaming_enabled,
        )
        key = await store.create_key(created.id)
        return Account(created.id, key.key)

    return make


@pytest.fixture
def admin(store: Store) -> Admin:
    """The store's operations answering with documents, as the CLI and ``/api/v2/usage`` show them."""
    return Admin(store, names())


def gateway_settings(emulator: EmulatorServer, database_url: str = "sqlite:///unused.db", **overrides: Any) -> Settings:
    """Settings of a gateway pointed at ``emulator`` with the operator keys above."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "elevenlabs_url": emulator.elevenlabs_url,
        "assemblyai_url": emulator.assemblyai_url,
        "elevenlabs_api_key": OPERATOR_ELEVENLABS_KEY,
        "assemblyai_api_key": OPERATOR_ASSEMBLYAI_KEY,
        "gateway_id": "test-gateway",
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture
async def gateway(emulator: EmulatorServer, store: Store) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Factory: ``await gateway(**settings_overrides)`` starts a gateway on the shared store and emulator."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Gateway:
        settings = gateway_settings(emulator, **overrides)
        app = create_app(settings, store=store)
        runner = await start_site(app, "127.0.0.1", 0)
        runners.append(runner)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sessions.append(http)
        return Gateway(app, bound_port(runner), settings, emulator, http)

    try:
        yield start
    finally:
        for http in sessions:
            await http.close()
        for runner in runners:
            await runner.cleanup()


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll a cheap in-process condition (e.g. a database row) until it holds; fails the test on timeout."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)
