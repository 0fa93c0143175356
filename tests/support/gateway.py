"""A running gateway app on an ephemeral loopback port, pointed at an upstream (usually the emulator)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from sttgate.admin import Admin
from sttgate.config import Settings
from sttgate.emulators.recorder import Recorder
from sttgate.gateway.tracing import Tracing
from sttgate.providers import names
from sttgate.store import Store
from sttgate.web.admin_app import build_admin_app
from sttgate.web.app import bound_port, create_app, start_site
from sttgate.web.services import SERVICES
from tests.support.emulator import OPERATOR_KEYS, EmulatorServer, upstream_settings
from tests.support.waiting import wait_for


def gateway_settings(
    upstream: EmulatorServer | str,
    *,
    keys: Mapping[str, str] = OPERATOR_KEYS,
    database_url: str = "sqlite:///unused.db",
    gateway_id: str = "test-gateway",
    **overrides: Any,
) -> Settings:
    """Settings of a gateway whose providers are all at ``upstream`` (an emulator, or ``ws://HOST:PORT``)."""
    base = upstream.base if isinstance(upstream, EmulatorServer) else upstream
    values: dict[str, Any] = {
        "database_url": database_url,
        **upstream_settings(base, keys),
        "gateway_id": gateway_id,
        **overrides,
    }
    return Settings.model_validate(values)


@dataclass
class RunningApp:
    """A gateway app being served: its runner (``runner.cleanup()`` stops it as the end of a process would) and its
    admin listener's."""

    app: web.Application
    runner: web.AppRunner
    settings: Settings
    admin_runner: web.AppRunner

    @property
    def port(self) -> int:
        return bound_port(self.runner)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{bound_port(self.admin_runner)}"


@asynccontextmanager
async def running_gateway(
    settings: Settings, store: Store | None = None, *, tracing: Tracing | None = None
) -> AsyncIterator[RunningApp]:
    """The gateway app of ``settings`` on the shared ``store`` (else its own database) on a free port, and its admin
    listener (``/metrics``) on another, as ``sttgate serve`` runs them; sessions traced with ``tracing`` if given."""
    app = create_app(settings, store=store, tracing=tracing)
    runner = await start_site(app, "127.0.0.1", 0)
    try:
        admin_runner = await start_site(build_admin_app(app[SERVICES]), "127.0.0.1", 0)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        yield RunningApp(app, runner, settings, admin_runner)
    finally:
        await admin_runner.cleanup()
        await runner.cleanup()


@dataclass
class Gateway:
    """A running gateway app with a client session (see the ``gateway`` fixture in ``tests/conftest.py``)."""

    app: web.Application
    port: int
    settings: Settings
    emulator: EmulatorServer
    http: aiohttp.ClientSession
    admin_url: str  # the admin listener (/metrics): http://127.0.0.1:PORT

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


@dataclass
class AccountGateway:
    """A gateway with an account of its own (the SDK and page tests): its URL, store, settings, account and key."""

    url: str  # http://127.0.0.1:PORT
    store: Store
    settings: Settings
    account_id: str
    key: str
    recorder: Recorder | None = None  # the emulator's, when the gateway relays to one
    tls_host: str | None = None  # 127.0.0.1:PORT of the same app over TLS, when started with tls=True
    cert_file: Path | None = None  # its self-signed certificate (for SSL_CERT_FILE)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


async def ended_usage(gw: AccountGateway, provider: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
    """The account's usage document once the gateway has recorded the end of its sessions (of ``provider``).

    The gateway writes a session's end just after the sockets close, so this polls the database, bounded.
    """

    async def ended() -> dict[str, Any] | None:
        usage = await Admin(gw.store, names()).usage(gw.account_id)
        sessions = [s for s in usage["sessions"] if provider in (None, s["provider"])]
        return usage if sessions and all(s["ended_at"] for s in sessions) else None

    return await wait_for(ended, timeout, interval=0.02, what="the end of the sessions recorded")
