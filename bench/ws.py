"""Just enough RFC 6455, as asyncio Protocols, for a cheap load generator and a cheap upstream.

The harness shares two cores with the relay under test; a general-purpose WebSocket stack costs as much per
frame as the relay itself (about 14 µs with aiohttp on each side), so both ends of the benchmark speak the wire
format directly. The client sends correct masked frames with one random mask key per connection (RFC 6455 wants
a fresh key per frame; no server can tell, and it lets the 1,600-byte payload be masked once). Neither end
fragments, compresses or negotiates extensions; both answer ping and close.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable

from bench.wire import (
    ASSEMBLYAI_PATH,
    BEGIN_MESSAGE,
    ECHO_EVERY,
    ECHO_TEMPLATE,
    FRAME_BYTES,
    STAMP,
    TERMINATION_MESSAGE,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; masked with ``mask`` (client → server) or not (server → client)."""
    n = len(payload)
    b1 = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((0x80 | opcode, b1 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, b1 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, b1 | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + xor(payload, mask)


def xor(data: bytes, mask: bytes) -> bytes:
    """Mask or unmask ``data`` (RFC 6455 §5.3)."""
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def parse_frames(buf: bytearray, on_frame: Callable[[int, memoryview, bytes | None], None]) -> None:
    """Call ``on_frame(opcode, payload_view, mask)`` for every complete frame in ``buf``; keep the rest."""
    pos, end = 0, len(buf)
    view = memoryview(buf)
    try:
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            mask = None
            if b1 & 0x80:
                if end - pos < head + 4:
                    break
                mask = bytes(buf[pos + head : pos + head + 4])
                head += 4
            if end - pos < head + length:
                break
            on_frame(b0 & 0x0F, view[pos + head : pos + head + length], mask)
            pos += head + length
    finally:
        view.release()
    del buf[:pos]


class UpstreamProtocol(asyncio.Protocol):
    """The minimal AssemblyAI-shaped upstream: Begin, a Turn echoing the stamp of every 5th audio frame."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open and not self._handshake():
            return
        parse_frames(self.buf, self._frame)

    def _handshake(self) -> bool:
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        path = lines[0].split(b" ")[1] if len(lines[0].split(b" ")) > 1 else b""
        key = headers.get(b"sec-websocket-key")
        if not path.startswith(ASSEMBLYAI_PATH.encode()) or key is None:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n" + frame(OP_TEXT, BEGIN_MESSAGE.encode())
        )
        self.open = True
        return True

    def _frame(self, opcode: int, payload: memoryview, mask: bytes | None) -> None:
        assert self.transport is not None
        if opcode == OP_BINARY:
            self.count += 1
            if self.count % ECHO_EVERY == 0:
                stamp = bytes(payload[: STAMP.size])
                seq, t = STAMP.unpack(xor(stamp, mask) if mask else stamp)
                self.transport.write(frame(OP_TEXT, (ECHO_TEMPLATE % (seq, t)).encode()))
            return
        data = xor(bytes(payload), mask) if mask else bytes(payload)
        if opcode == OP_TEXT and b'"Terminate"' in data:
            self.transport.write(frame(OP_TEXT, TERMINATION_MESSAGE.encode()) + frame(OP_CLOSE, b"\x03\xe8"))
        elif opcode == OP_CLOSE:
            self.transport.write(frame(OP_CLOSE, data[:2]))
            self.transport.close()
        elif opcode == OP_PING:
            self.transport.write(frame(OP_PONG, data))


class HandshakeFailed(Exception):
    """The server answered the upgrade with something other than 101 (or a wrong Sec-WebSocket-Accept)."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body  # what of the answer's body arrived with its head (the JSON error code, usually)


class ClientProtocol(asyncio.Protocol):
    """One generator stream: sends stamped audio frames, reports each echoed stamp to ``on_echo``."""

    def __init__(self, request: bytes, accept: bytes, on_echo: Callable[[int], None]) -> None:
        self.request = request
        self.accept = b"sec-websocket-accept: " + accept.lower()
        self.on_echo = on_echo
        self.mask = os.urandom(4)
        self.stamp_mask = int.from_bytes(self.mask * 3, "big")
        self.masked_pad = xor(bytes(FRAME_BYTES), self.mask)[STAMP.size :]
        self.head = frame(OP_BINARY, bytes(FRAME_BYTES), self.mask)[:-FRAME_BYTES]
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_sent = False
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionResetError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            status = int(head.split(b" ", 2)[1])
            if status != 101 or self.accept not in head.lower():
                self.upgraded.set_exception(HandshakeFailed(status, bytes(self.buf)))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded.set_result(None)
        parse_frames(self.buf, self._frame)

    def _frame(self, opcode: int, payload: memoryview, _mask: bytes | None) -> None:
        assert self.transport is not None
        if opcode == OP_TEXT:
            i = bytes(payload[:48]).find(b'"t":')
            if i >= 0:
                j = i + 4
                k = bytes(payload[j : j + 24]).find(b",")
                self.on_echo(int(bytes(payload[j : j + k])))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if not self.close_sent:
                self.close_sent = True
                self.transport.write(frame(OP_CLOSE, bytes(payload[:2]), self.mask))
            if not self.closed.done():
                self.closed.set_result(code)
            self.transport.close()
        elif opcode == OP_PING:
            self.transport.write(frame(OP_PONG, bytes(payload), self.mask))

    @property
    def is_open(self) -> bool:
        return self.upgraded.done() and not self.closed.done() and not self.close_sent

    def send_audio(self, now_ns: int) -> None:
        """One standard frame: 1,600 bytes, the first 12 carrying the sequence number and the send time."""
        assert self.transport is not None
        self.seq += 1
        stamp = (int.from_bytes(STAMP.pack(self.seq, now_ns), "big") ^ self.stamp_mask).to_bytes(STAMP.size, "big")
        self.transport.write(self.head + stamp + self.masked_pad)

    async def close(self, timeout: float = 5.0) -> int | None:
        """Send close 1000 and wait for the server's close (or the connection's end)."""
        if self.transport is not None and not self.close_sent and not self.closed.done():
            self.close_sent = True
            self.transport.write(frame(OP_CLOSE, b"\x03\xe8", self.mask))
        try:
            return await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        finally:
            if self.transport is not None:
                self.transport.close()


def upgrade_request(url_path: str, host: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """The HTTP/1.1 upgrade request for ``url_path`` (path and query, already encoded) and the accept it expects."""
    key = base64.b64encode(os.urandom(16))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"GET {url_path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()
    return request, accept_key(key)
