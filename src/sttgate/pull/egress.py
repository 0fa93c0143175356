"""The egress guard: a tiny HTTP proxy on loopback that every HTTP(S) connection of FFmpeg goes through.

Checking ``audio_url`` once is not enough for HTTP sources: an HLS playlist names more URLs (variants, segments,
keys) and reloads itself, a server can redirect, and a host name can resolve differently a second later (DNS
rebinding). FFmpeg gets ``http_proxy=<this guard>`` in its environment, so every HTTP connection it makes, and every
HTTPS one (as ``CONNECT``), arrives here first. The guard resolves the target host, refuses the connection (403) if
any address it resolves to is not allowed, and otherwise connects to the address it checked (never resolving
again) and pipes bytes both ways. Plain HTTP requests are rewritten to origin form with ``Connection: close``, so
each proxied connection carries exactly one request to the host that was checked.

Used only when private addresses are refused (the default); with ``STTGATE_PULL_ALLOW_PRIVATE=1`` there is nothing
to enforce and FFmpeg connects directly. RTSP and RTMP(S) go through :mod:`sttgate.pull.relay` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

from sttgate.pull.loopback import LoopbackServer, close_writer, pipe
from sttgate.pull.urlsafety import AddressPolicy, Resolver, address_allowed, system_resolver

log = logging.getLogger("sttgate.pull")

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
_HOP_HEADERS = frozenset({"connection", "proxy-connection", "proxy-authorization", "keep-alive"})


class Refused(Exception):
    pass


def parse_target(method: str, target: str) -> tuple[str, int, str | None]:
    """``(host, port, origin-form path)`` of a proxy request; path is None for ``CONNECT`` (a tunnel)."""
    if method == "CONNECT":
        host, sep, port_text = target.rpartition(":")
        if not sep or not port_text.isdigit():
            raise Refused(f"bad CONNECT target {target!r}")
        return host.strip("[]"), int(port_text), None
    parts = urlsplit(target)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise Refused(f"only absolute http:// targets are proxied, not {target[:100]!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise Refused(f"bad port in {target[:100]!r}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, path


def rewrite_head(head: bytes, path: str) -> bytes:
    """The request head for the origin: origin-form request line, hop-by-hop headers dropped, one request only."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    version = rest.rpartition(b" ")[2]
    out = [b" ".join((method, path.encode("latin-1"), version))]
    for line in lines[1:]:
        if not line:
            continue
        name = line.partition(b":")[0].strip().decode("latin-1").lower()
        if name not in _HOP_HEADERS:
            out.append(line)
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


class EgressGuard(LoopbackServer):
    """The proxy server; ``proxy_url`` goes into FFmpeg's ``http_proxy``."""

    def __init__(
        self, *, allow_private: bool = False, policy: AddressPolicy | None = None, resolver: Resolver | None = None
    ) -> None:
        super().__init__()
        self.policy: AddressPolicy = policy or (
            lambda address, _port: address_allowed(address, allow_private=allow_private)
        )
        self.resolver: Resolver = resolver or system_resolver
        self.refused: list[str] = []
        self.allowed: list[str] = []
        self.port = 0

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.port = await self.start_serving()

    async def close(self) -> None:
        await self.stop_serving()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            await self._refuse(writer, "request head too large", 431)
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.rpartition(" ")[0]
        try:
            host, port, path = parse_target(method.upper(), target)
            address = await self._checked_address(host, port)
        except Refused as exc:
            await self._refuse(writer, str(exc))
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                up_reader, up_writer = await asyncio.open_connection(address, port)
        except (OSError, TimeoutError) as exc:
            await self._refuse(writer, f"cannot connect to {host}:{port}: {exc}", 502)
            return
        self.allowed.append(f"{host}:{port}")
        try:
            if path is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                up_writer.write(rewrite_head(head, path))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            await close_writer(up_writer)

    async def _checked_address(self, host: str, port: int) -> str:
        try:
            addresses = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise Refused(f"cannot resolve {host}: {exc}") from None
        for address in addresses:
            if not self.policy(address, port):
                raise Refused(f"{host}:{port} resolves to {address}, which pull sources may not reach")
        if not addresses:
            raise Refused(f"{host} has no address")
        return addresses[0]

    async def _refuse(self, writer: asyncio.StreamWriter, why: str, status: int = 403) -> None:
        self.refused.append(why)
        log.warning("event=pull_egress_refused reason=%r", why)
        body = f"sttgate egress guard: {why}\n".encode()
        writer.write(
            f"HTTP/1.1 {status} Refused\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
