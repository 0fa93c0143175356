"""The one object a handler needs: everything the gateway app shares, stored under one application key.

Handlers fetch it once (``svc = request.app[SERVICES]``) instead of looking up each part under a key of its own.
Settings, metrics, the gateway id and tracing (None when off) exist from :func:`~sttgate.web.app.create_app` on;
the store, the session manager, the upstream HTTP session and the pull manager exist once the app has started (its
clean-up contexts set them), and reading one earlier is a programming error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from aiohttp import web

from sttgate.config import Settings
from sttgate.core.outcomes import SessionKind
from sttgate.gateway.live import LiveSession
from sttgate.gateway.manager import SessionManager
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.gateway.opening import open_stream
from sttgate.gateway.tracing import Tracing
from sttgate.providers import Provider
from sttgate.pull.manager import PullManager
from sttgate.store import Principal, Store
from sttgate.web.connections import ConnectionLimit


@dataclass
class Services:
    """The gateway app's shared parts; the started ones are properties that fail loudly before start-up."""

    settings: Settings
    metrics: GatewayMetrics
    gateway_id: str
    connections: ConnectionLimit
    tracing: Tracing | None = None  # OpenTelemetry, when configured (docs/operations.md#tracing)
    _store: Store | None = field(default=None, init=False, repr=False)
    _sessions: SessionManager | None = field(default=None, init=False, repr=False)
    _upstream_http: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _pull: PullManager | None = field(default=None, init=False, repr=False)
    # Passthrough relays run as tasks of their own (the socket is theirs, not the handler's); shut-down waits for them.
    relays: set[asyncio.Future[None]] = field(default_factory=set, init=False, repr=False)

    @property
    def store(self) -> Store:
        return _started(self._store, "store")

    @store.setter
    def store(self, value: Store) -> None:
        self._store = value

    @property
    def sessions(self) -> SessionManager:
        return _started(self._sessions, "session manager")

    @sessions.setter
    def sessions(self, value: SessionManager) -> None:
        self._sessions = value

    @property
    def upstream_http(self) -> aiohttp.ClientSession:
        """The HTTP session every provider WebSocket is opened with."""
        return _started(self._upstream_http, "upstream HTTP session")

    @upstream_http.setter
    def upstream_http(self, value: aiohttp.ClientSession) -> None:
        self._upstream_http = value

    @property
    def pull(self) -> PullManager:
        return _started(self._pull, "pull manager")

    @pull.setter
    def pull(self, value: PullManager) -> None:
        self._pull = value

    async def open_stream(
        self,
        principal: Principal,
        provider: Provider,
        forwarded: str,
        *,
        kind: SessionKind = SessionKind.WEBSOCKET,
        session_id: str | None = None,
    ) -> LiveSession:
        """:func:`sttgate.gateway.opening.open_stream` with this app's session manager and upstream HTTP session."""
        return await open_stream(
            self.sessions, self.upstream_http, principal, provider, forwarded, kind=kind, session_id=session_id
        )


_T = TypeVar("_T")


def _started(part: _T | None, name: str) -> _T:
    if part is None:
        raise RuntimeError(f"the gateway app's {name} exists only once the app has started")
    return part


SERVICES = web.AppKey("sttgate_services", Services)
