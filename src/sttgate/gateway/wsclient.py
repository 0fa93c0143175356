"""The provider's WebSocket handshake, owned by the gateway: a small HTTP/1.1 upgrade client on a raw connection.

The passthrough data plane needs the provider connection's own transport (to forward frame bytes into it unchanged),
so the gateway performs the upgrade itself rather than through an HTTP client library that would keep the socket:
``GET`` with the upgrade headers and the operator's credential, then the provider's answer read up to the end of its
head. A ``101`` with the right ``Sec-WebSocket-Accept`` hands the connection to a
:class:`~sttgate.gateway.framesocket.FrameSocket` together with any bytes that followed the head in the same read (a
provider may send its first message right behind its 101; nothing is lost). Any other status is a refusal whose body
(up to 4 KiB, read for at most a second) is kept for the client's ``upstream_rejected`` message. TLS (``wss://``) is
asyncio's SSL transport, which takes ``set_protocol`` like a plain one.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from yarl import URL

from sttgate.config import Settings
from sttgate.core import refusals
from sttgate.core.refusals import Refusal
from sttgate.gateway.framesocket import FrameSocket
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.gateway.upstream import classify, report_connect_failure
from sttgate.providers import Provider

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A provider's response head is a few hundred bytes; anything beyond this is not a WebSocket server.
_MAX_HEAD = 64 * 1024
# How much of a refusal body is kept, and how long it is waited for (it must not hold the client's handshake).
BODY_LIMIT = 4096
BODY_READ_SECONDS = 1.0


class HandshakeRefused(Exception):
    """The provider answered the upgrade with ``status`` (not 101); ``body`` is the start of its body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the provider answered {status}")
        self.status = status
        self.body = body


class HandshakeFailed(ConnectionError):
    """The provider's answer was not a valid WebSocket handshake (no status line, a wrong accept key...)."""


@functools.cache
def upstream_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The TLS context of ``wss://`` provider connections: the system's trust store (plus ``ca_file``), certificate
    and host name checked; built once per process (loading a trust store takes milliseconds)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class _Handshake(asyncio.Protocol):
    """Collects the answer to the upgrade request: its head, then (a refusal) the start of its body."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: asyncio.Future[tuple[int, dict[str, str], bytes]] = loop.create_future()
        self.body_done: asyncio.Future[None] = loop.create_future()
        self.body = bytearray()
        self.body_length: int | None = None
        self.in_body = False
        self.tail = bytearray()  # bytes after a 101's head that came before the connection was handed over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.in_body:
            self._body(data)
            return
        if self.head.done():
            self.tail += data
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self.head.set_exception(HandshakeFailed("the provider's response head is too long"))
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        rest = bytes(self.buffer[end + 4 :])
        self.buffer.clear()
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self.head.set_exception(HandshakeFailed("the provider's answer is not HTTP/1.1"))
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        if status != 101:
            self.in_body = True
            length = headers.get("content-length", "")
            self.body_length = int(length) if length.isdigit() else None
            self._body(rest)
            rest = b""
        self.head.set_result((status, headers, rest))

    def _body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) >= BODY_LIMIT or (self.body_length is not None and len(self.body) >= self.body_length):
            self._body_end()

    def _body_end(self) -> None:
        if not self.body_done.done():
            self.body_done.set_result(None)

    def eof_received(self) -> bool:
        self._body_end()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.head.done():
            self.head.set_exception(exc or ConnectionResetError("the provider closed the connection"))
        self._body_end()


async def open_websocket(
    url: str,
    headers: Mapping[str, str],
    *,
    ssl_context: ssl.SSLContext | None,
    socket: Callable[[], FrameSocket],
) -> FrameSocket:
    """Open ``url`` (``ws://`` or ``wss://``, its path and query sent exactly as given) with ``headers`` and return the
    :class:`FrameSocket` ``socket()`` made, connected. Raises :class:`HandshakeRefused` (a status other than 101),
    :class:`HandshakeFailed`, ``OSError`` (DNS, refused, reset, TLS); the caller bounds the time."""
    target = URL(url, encoded=True)
    secure = target.scheme in ("wss", "https")
    host = target.raw_host or ""
    port = target.port or (443 if secure else 80)
    key = base64.b64encode(os.urandom(16)).decode()
    host_header = host if target.port is None or target.is_default_port() else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if target.is_default_port() else f"[{host}]:{port}"
    lines = [
        f"GET {target.raw_path_qs} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    transport, handshake = await loop.create_connection(
        _Handshake, host, port, ssl=ssl_context if secure else None, server_hostname=host if secure else None
    )
    try:
        transport.write(request)
        status, answer, rest = await handshake.head
        if status != 101:
            try:
                async with asyncio.timeout(BODY_READ_SECONDS):
                    await handshake.body_done
            except TimeoutError:
                pass
            raise HandshakeRefused(status, bytes(handshake.body[:BODY_LIMIT]))
        if (
            answer.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in answer.get("connection", "").lower()
            or answer.get("sec-websocket-accept") != accept_key(key)
        ):
            raise HandshakeFailed("the provider's 101 is not a WebSocket handshake")
        if answer.get("sec-websocket-extensions"):
            raise HandshakeFailed("the provider accepted an extension the gateway did not offer")
    except BaseException:
        transport.abort()
        raise
    sock = socket()
    transport.set_protocol(sock)
    sock.connection_made(transport)
    sock.feed(rest + bytes(handshake.tail))
    return sock


def _refusal(exc: BaseException) -> tuple[Refusal, int | None, bytes]:
    """What the client gets for a failed provider connect, and the provider's status and body when it answered."""
    if isinstance(exc, TimeoutError):
        return refusals.upstream_timeout(), None, b""
    if isinstance(exc, HandshakeRefused):
        return classify(exc.status, exc.body), exc.status, exc.body
    return refusals.upstream_unavailable(), None, b""


async def connect_provider(
    settings: Settings,
    metrics: GatewayMetrics,
    provider: Provider,
    forwarded: str,
    ssl_context: ssl.SSLContext | None,
    *,
    session_id: str = "",
) -> FrameSocket:
    """Open the provider's WebSocket with the operator's credential only; provider failures become refusals, each
    logged once at WARNING with its reason and counted (as :func:`sttgate.gateway.upstream.connect_upstream` does for
    the aiohttp data plane)."""
    provider_settings = settings.provider(provider.name)
    url = provider.upstream_url(provider_settings.url, forwarded)
    started = time.monotonic()

    def socket() -> FrameSocket:
        return FrameSocket(
            client_side=True,
            max_size=settings.max_frame_bytes,
            close_timeout=settings.close_timeout_seconds,
            heartbeat=settings.heartbeat_seconds,
        )

    try:
        async with asyncio.timeout(settings.upstream_connect_timeout_seconds):
            sock = await open_websocket(
                url, provider.operator_headers(provider_settings), ssl_context=ssl_context, socket=socket
            )
    except (TimeoutError, HandshakeRefused, OSError, ValueError) as exc:
        refusal, status, body = _refusal(exc)
        report_connect_failure(
            metrics, provider.name, session_id, URL(url, encoded=True), exc, refusal, started, status=status, body=body
        )
        raise refusal from None
    metrics.upstream_connect.labels(provider.name).observe(time.monotonic() - started)
    return sock
