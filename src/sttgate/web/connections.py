"""The public listener's connections: how many may be open, how long one may take to send its request head, and what
a refused request keeps in memory (docs/operations.md#connections).

- **Descriptors.** Every connection holds a file descriptor, and a session holds a second one for its provider. When a
  process runs out (``RLIMIT_NOFILE``), everything fails at once: ``/healthz``, new sessions, the database. So the
  number of open connections is capped (:func:`connection_cap`), below the limit with room for the provider hops, the
  database and a full accept backlog. At the cap a new connection first pushes out the oldest connection that has no
  request in progress (an idle or slow client: it is only waiting for a request head); when every connection is busy,
  the new one is closed at once, before anything is read or allocated for it.
- **Request heads.** A connection must deliver a complete request head within ``request_head_timeout_seconds`` of
  opening, and a kept-alive connection its next one within as long of the previous answer; else it is closed. This is
  aiohttp's keep-alive timer, which runs from the start of a connection and closes it when no complete head arrived.
- **Header sizes** are bounded (``max_header_field_bytes`` for the request line and each header, ``max_headers``).
- **Refusals keep nothing.** aiohttp keeps each HTTP parser error with its traceback, whose frame holds the bytes just
  received and the exception itself: a reference cycle that keeps up to a megabyte per refused request until the
  interpreter's rare full collection. :class:`GatewayRequestHandler` drops those tracebacks once the error is
  answered or the connection is gone, so the memory is freed at once.

The per-frame path is untouched: nothing here runs per received chunk, only per connection and per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from sttgate.gateway.metrics import GatewayMetrics

# Descriptors kept free of client connections: a full accept backlog (connections accepted in one event-loop turn,
# before any is refused), the database pool, log files, FFmpeg pipes and the listening sockets.
DESCRIPTOR_RESERVE = 256
# Half of the rest: a connection that becomes a session takes a second descriptor for its provider.
DESCRIPTORS_PER_CONNECTION = 2
# Never fewer than this many connections, however low the limit (a limit this low is a misconfiguration anyway).
MIN_CONNECTIONS = 16


def raise_descriptor_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (as Go and nginx do: the soft limit is often 1024
    while the hard one allows far more); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return descriptor_limit()


def descriptor_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE`` (a very large number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def connection_cap(configured: int, descriptors: int) -> int:
    """The number of connections that may be open: what the descriptors allow (see the module docstring), or less
    when ``configured`` (0 = derived) says so."""
    allowed = max(MIN_CONNECTIONS, (descriptors - DESCRIPTOR_RESERVE) // DESCRIPTORS_PER_CONNECTION)
    return allowed if configured <= 0 else min(configured, allowed)


def forget_tracebacks(exc: BaseException | None) -> None:
    """Drop the tracebacks of ``exc`` and its chain: their frames hold the request bytes and, through their locals,
    the exception itself (a cycle only the full collection would free)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()  # uvloop's transports are not asyncio.Transport subclasses


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, which tells its :class:`ConnectionLimit` when it closes and keeps no parser error's
    traceback."""

    __slots__ = ("_limit",)

    def __init__(self, limit: ConnectionLimit, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limit = limit

    def connection_lost(self, exc: BaseException | None) -> None:
        self._limit.closed(self)
        # Requests parsed or refused but never answered (the client went on sending after a parser error): their
        # errors' tracebacks would keep the received bytes alive.
        for message, _ in self._messages:
            forget_tracebacks(getattr(message, "exc", None))
        self._messages.clear()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        try:
            return super().handle_error(request, status, exc, message)
        finally:
            forget_tracebacks(exc)  # logged by now


class ConnectionLimit:
    """The cap on open connections of one process, and the connections that are idle (no request in progress),
    oldest first: the ones pushed out at the cap. A connection the passthrough data plane took over from aiohttp (a
    WebSocket session) still counts until its relay ends (:meth:`hand_over`)."""

    def __init__(self, cap: int, metrics: GatewayMetrics) -> None:
        self.cap = cap
        self._metrics = metrics
        self._open: set[GatewayRequestHandler] = set()
        self._idle: dict[GatewayRequestHandler, None] = {}
        self._handed_over = 0
        metrics.connection_limit.set(cap)

    @property
    def count(self) -> int:
        """Open connections: aiohttp's and the handed-over sessions'."""
        return len(self._open) + self._handed_over

    def hand_over(self, protocol: object) -> Callable[[], None]:
        """``protocol``'s connection leaves aiohttp for a relay of its own: it keeps counting (never pushed out) until
        the returned function is called, once, when that relay is done with the socket."""
        if not isinstance(protocol, GatewayRequestHandler) or protocol not in self._open:
            return lambda: None  # not one of this limit's connections (a listener without the cap)
        self._open.discard(protocol)
        self._idle.pop(protocol, None)
        self._handed_over += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._handed_over -= 1
                self._metrics.connections_open.set(self.count)

        return release

    def protocol_factory(self, server: web.Server, **handler_args: Any) -> Callable[[], asyncio.BaseProtocol]:
        """The listener's protocol factory: a :class:`GatewayRequestHandler` of ``server`` for each accepted
        connection while under the cap."""
        loop = asyncio.get_running_loop()

        def accept() -> asyncio.BaseProtocol:
            if self.count >= self.cap and not self._push_out_idle():
                self._metrics.connections_shed.labels("refused").inc()
                return _Refused()
            handler = GatewayRequestHandler(self, server, loop=loop, **handler_args)
            self._open.add(handler)
            self._idle[handler] = None
            self._metrics.connections_open.set(self.count)
            return handler

        return accept

    def _push_out_idle(self) -> bool:
        handler = next(iter(self._idle), None)
        if handler is None:
            return False
        del self._idle[handler]
        self._open.discard(handler)
        handler.force_close()
        self._metrics.connections_shed.labels("idle_closed").inc()
        return True

    def closed(self, handler: GatewayRequestHandler) -> None:
        self._open.discard(handler)
        self._idle.pop(handler, None)
        self._metrics.connections_open.set(self.count)

    @web.middleware
    async def busy_while_handled(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A connection with a request in progress (a WebSocket session: all of it) is never pushed out."""
        protocol = request.protocol
        if not isinstance(protocol, GatewayRequestHandler) or protocol not in self._open:
            return await handler(request)
        self._idle.pop(protocol, None)
        try:
            return await handler(request)
        finally:
            if protocol in self._open:  # idle again (kept alive), and newest
                self._idle[protocol] = None


class LimitedSite(web.BaseSite):
    """A TCP listener whose connections go through ``protocol_factory`` (aiohttp's ``TCPSite`` takes no factory)."""

    __slots__ = ("_factory", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._factory = protocol_factory

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port or None
        )
