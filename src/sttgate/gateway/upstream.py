"""The two WebSocket hops as small links, so the session and the relay never see aiohttp's types.

:class:`Link` is all a :class:`~sttgate.gateway.live.LiveSession` (the provider hop, ``UpstreamLink``) and the relay
(the client hop, ``ClientLink``) use: send a text or binary frame, receive the next :data:`Frame`, close with a code
and reason. :class:`AiohttpLink` puts either aiohttp socket behind it; tests put a fake behind it. Another engine
would bring its own link.

Also here: opening the provider's socket (:func:`connect_upstream`), which turns every provider failure into a
:class:`~sttgate.core.refusals.Refusal` (502/504, or the provider's own 4xx quoted) and logs its reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from enum import IntEnum, StrEnum
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import ClientResponse, ClientWebSocketResponse, ClientWSTimeout, WebSocketError, WSMsgType
from yarl import URL

from sttgate.config import Settings
from sttgate.core import closecodes, refusals
from sttgate.core.refusals import Refusal
from sttgate.gateway.logevents import log_event
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.providers import Provider


class FrameKind(IntEnum):
    """Kinds of frames, as the project names them. Data frames carry the RFC 6455 opcodes, so an engine whose
    messages are ``(opcode, payload, ...)`` tuples (aiohttp's are) hands them over as they are: no conversion and no
    extra coroutine per frame. The other kinds are what :meth:`Link.ended` reports."""

    TEXT = 1  # payload: UTF-8 bytes (never decoded on the way through)
    BINARY = 2
    CLOSE = 8  # the peer's close frame: code (1005 when it had none) and reason
    CLOSING = 256  # our own close is under way: nothing more will come
    LOST = 257  # the connection ended without a close frame
    ERROR = 258  # the peer broke the protocol: code (e.g. 1009, a frame over the size limit)


# A received frame: ``(kind, payload, extra)``. A data frame's kind equals ``FrameKind.TEXT`` or ``FrameKind.BINARY``
# (compare with ``==``: an engine may use its own int enum) and its payload is bytes; any other frame ends the hop
# and ``Link.ended(frame)`` says how.
Frame = tuple[int, Any, Any]
# How a hop ended: (CLOSE / ERROR / CLOSING / LOST, code, reason).
End = tuple[FrameKind, int, str]

TEXT = FrameKind.TEXT
BINARY = FrameKind.BINARY
DATA = (BINARY, TEXT)  # ``kind in DATA``: a data frame


class Link(Protocol):
    """One WebSocket hop."""

    def send(self, data: bytes, kind: int) -> Awaitable[None]:
        """Send a data frame: ``kind`` is ``FrameKind.TEXT`` (``data`` is its UTF-8 payload) or ``FrameKind.BINARY``
        (or the kind of a received frame, relayed as is); ``ConnectionError`` if the socket is gone."""
        ...

    def receive(self) -> Awaitable[Frame]:
        """The next frame; after a non-data frame the hop is over."""
        ...

    def ended(self, frame: Frame) -> End:
        """How the hop ended, given the non-data frame :meth:`receive` returned."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (or complete the peer's close) with ``code`` and ``reason``; nothing if already closed."""
        ...

    @property
    def closed(self) -> bool: ...


UpstreamLink = Link
ClientLink = Link


class AiohttpSocket(Protocol):
    """What :class:`AiohttpLink` uses of an aiohttp WebSocket: the client's and the server's have it alike (this
    module names no server type, so the gateway does not depend on ``aiohttp.web``)."""

    async def receive(self, timeout: float | None = None) -> Any: ...  # a message, typed per aiohttp version

    async def send_frame(self, message: bytes, opcode: WSMsgType, compress: int | None = None) -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...

    @property
    def closed(self) -> bool: ...


class AiohttpLink:
    """An aiohttp socket (client or server side, opened with ``decode_text=False``) as a :class:`Link`.

    ``receive`` and ``send`` are aiohttp's own bound coroutines (its messages are ``(type, data, extra)`` tuples
    whose data types equal :class:`FrameKind`'s, and it takes any int opcode), so the frame path pays nothing for
    the indirection."""

    __slots__ = ("receive", "send", "ws")

    def __init__(self, ws: AiohttpSocket) -> None:
        self.ws = ws
        self.receive: Callable[[], Awaitable[Frame]] = ws.receive
        # aiohttp types the opcode as its WSMsgType, an IntEnum whose TEXT/BINARY equal FrameKind's.
        self.send = cast(Callable[[bytes, int], Awaitable[None]], ws.send_frame)

    def ended(self, frame: Frame) -> End:
        t, data, extra = frame
        if t == WSMsgType.CLOSE:
            # aiohttp reports a close frame without a status as 0; RFC 6455 calls it 1005.
            return FrameKind.CLOSE, data or closecodes.NO_STATUS, extra or ""
        if t == WSMsgType.ERROR and isinstance(data, WebSocketError):
            return FrameKind.ERROR, data.code, ""
        if t == WSMsgType.CLOSING:
            return FrameKind.CLOSING, 0, ""
        return FrameKind.LOST, closecodes.ABNORMAL, ""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code=code, message=reason.encode())

    @property
    def closed(self) -> bool:
        return self.ws.closed


class UpstreamSocket(ClientWebSocketResponse):
    """The provider hop; a frame above the limit closes it with 1009 "message too big" (aiohttp sends no reason)."""

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if code == closecodes.MESSAGE_TOO_BIG.code and not message:
            message = closecodes.MESSAGE_TOO_BIG.reason.encode()
        return await super().close(code=code, message=message)


# How much of a provider's refusal body is kept to quote it (upstream_rejected keeps 1000 characters).
_BODY_LIMIT = 4096
# A provider refusal body is read only this long: it must not hold the client's handshake hostage.
_BODY_READ_SECONDS = 1.0


class _RefusalBody:
    __slots__ = ("body",)

    def __init__(self) -> None:
        self.body = b""


# The upstream handshake of the current task collects the provider's refusal body here (aiohttp drops it).
_REFUSAL_BODY: contextvars.ContextVar[_RefusalBody | None] = contextvars.ContextVar(
    "sttgate_refusal_body", default=None
)


class HandshakeResponse(ClientResponse):
    """Reads the body of a non-101 answer to an upstream upgrade, so a provider's 4xx can be quoted to the client."""

    async def start(self, connection: Any) -> ClientResponse:
        response = await super().start(connection)
        holder = _REFUSAL_BODY.get()
        if holder is not None and self.status >= 400:
            chunks: list[bytes] = []
            size = 0
            try:
                async with asyncio.timeout(_BODY_READ_SECONDS):
                    while size < _BODY_LIMIT and not self.content.at_eof():
                        chunk = await self.content.read(_BODY_LIMIT - size)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            holder.body = b"".join(chunks)
        return response


class ConnectFailure(StrEnum):
    """Why a provider connection failed: the ``reason`` of its log line and metric (docs/operations.md#logs)."""

    DNS = "dns"  # the provider's host name did not resolve
    REFUSED = "refused"  # nothing listens there (connection refused)
    TLS = "tls"  # the TLS handshake failed (certificate, protocol)
    STATUS = "status"  # the provider answered the upgrade with another status than 101
    TIMEOUT = "timeout"  # no 101 within the connect timeout
    NETWORK = "network"  # any other socket error: unreachable, reset, closed before answering


def connect_failure(exc: BaseException) -> ConnectFailure:
    """The reason an upstream connect raised ``exc`` (a timeout, an aiohttp client error or an ``OSError``, e.g. of
    ``asyncio.open_connection``)."""
    if isinstance(exc, TimeoutError):  # ours, or aiohttp's socket connect/read timeouts
        return ConnectFailure.TIMEOUT
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return ConnectFailure.STATUS
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return ConnectFailure.DNS
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return ConnectFailure.TLS
    os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(os_error, ConnectionRefusedError):
        return ConnectFailure.REFUSED
    return ConnectFailure.NETWORK


async def connect_upstream(
    http: aiohttp.ClientSession,
    settings: Settings,
    metrics: GatewayMetrics,
    provider: Provider,
    forwarded: str,
    *,
    session_id: str = "",
) -> AiohttpLink:
    """Open the provider's WebSocket over ``http`` with the operator's credential only; provider failures become
    refusals, each logged once at WARNING with its reason (``event=upstream_connect_failed``) and counted."""
    provider_settings = settings.provider(provider.name)
    # encoded=True: the client's query goes out byte for byte, never re-quoted.
    url = URL(provider.upstream_url(provider_settings.url, forwarded), encoded=True)
    holder = _RefusalBody()
    reset = _REFUSAL_BODY.set(holder)
    started = time.monotonic()
    try:
        async with asyncio.timeout(settings.upstream_connect_timeout_seconds):
            upstream = await http.ws_connect(
                url,
                headers=provider.operator_headers(provider_settings),
                compress=0,
                autoclose=False,
                autoping=True,
                heartbeat=settings.heartbeat_seconds,
                max_msg_size=settings.max_frame_bytes + 1,
                decode_text=False,
                timeout=ClientWSTimeout(ws_receive=None, ws_close=settings.close_timeout_seconds),
            )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        refusal = _refusal(exc, holder.body)
        status = exc.status if isinstance(exc, aiohttp.WSServerHandshakeError) else None
        report_connect_failure(
            metrics, provider.name, session_id, url, exc, refusal, started, status=status, body=holder.body
        )
        raise refusal from None
    finally:
        _REFUSAL_BODY.reset(reset)
    metrics.upstream_connect.labels(provider.name).observe(time.monotonic() - started)
    return AiohttpLink(upstream)


def report_connect_failure(
    metrics: GatewayMetrics,
    provider: str,
    session_id: str,
    url: URL,
    exc: BaseException,
    refusal: Refusal,
    started: float,
    *,
    status: int | None = None,
    body: bytes = b"",
) -> None:
    """The one WARNING line (``event=upstream_connect_failed``) and count of a failed provider connection: ``exc``
    what failed (its reason by :func:`connect_failure`, or ``status`` when the provider answered another status than
    101, with its ``body``), ``refusal`` what the client gets, ``started`` the attempt's ``time.monotonic()``."""
    reason = ConnectFailure.STATUS if status is not None else connect_failure(exc)
    metrics.upstream_connect_failures.labels(provider, reason.value).inc()
    log_event(
        "upstream_connect_failed",
        level=logging.WARNING,
        session=session_id,
        provider=provider,
        reason=reason.value,
        **({} if status is None else {"status": status}),
        upstream=url.with_query(None),  # the client's parameters are no business of this line
        error=type(exc).__name__,
        detail=_detail(exc, body),
        refusal=refusal.code,
        seconds=f"{time.monotonic() - started:.3f}",
    )


# How much of an error (or of the provider's refusal body) the log line quotes.
_DETAIL_MAX = 200


def _detail(exc: BaseException, body: bytes) -> str:
    if body:
        text = body.decode("utf-8", "replace")
    elif isinstance(exc, aiohttp.WSServerHandshakeError):
        text = exc.message
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:_DETAIL_MAX]


def _refusal(exc: BaseException, body: bytes) -> Refusal:
    if isinstance(exc, TimeoutError):
        return refusals.upstream_timeout()
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return classify(exc.status, body)
    return refusals.upstream_unavailable()


def classify(status: int, body: bytes) -> Refusal:
    """A provider's refusal of the upgrade as the client's: 401/403 its credential, other 4xx quoted, else 502."""
    if status in (401, 403):
        return refusals.upstream_auth_failed()
    if 400 <= status < 500:
        return refusals.upstream_rejected(status, body.decode("utf-8", "replace"))
    return refusals.upstream_unavailable()
