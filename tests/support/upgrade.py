"""WebSocket upgrade requests that keep what aiohttp's WebSocket client drops: a refusal's body and headers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL


def _upgrade_headers() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


async def handshake(url: str | URL, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """An HTTP upgrade request; returns ``(status, json body or None, headers)`` and closes the connection.

    On 101 the connection is closed at once (the gateway then ends the session).
    """
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={**_upgrade_headers(), **(headers or {})}) as resp,
    ):
        body = None
        if resp.status != 101:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
        return resp.status, body, dict(resp.headers)


@dataclass
class RawSocket:
    """The outcome of one upgrade request: the status, the refusal body, and for a 101 the open connection."""

    status: int
    headers: dict[str, str]
    body: Any = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def close(self, code: int = 1000) -> tuple[int | None, str]:
        """A client-initiated close handshake; returns the code and reason of the gateway's close frame."""
        assert self.reader is not None and self.writer is not None
        mask = os.urandom(4)
        payload = struct.pack("!H", code)
        self.writer.write(
            bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        )
        await self.writer.drain()
        try:
            async with asyncio.timeout(10):
                while True:
                    b0, b1 = await self.reader.readexactly(2)
                    length = b1 & 0x7F
                    if length == 126:
                        (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                    elif length == 127:
                        (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                    data = await self.reader.readexactly(length)
                    if b0 & 0x0F == 0x8:
                        if len(data) < 2:
                            return None, ""
                        return struct.unpack("!H", data[:2])[0], data[2:].decode()
        finally:
            self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def raw_upgrade(port: int, query: str) -> RawSocket:
    """``GET /ws/v2/audio-stream?query`` as a WebSocket upgrade, written byte for byte on a plain TCP connection.

    Unlike :func:`handshake`, an accepted socket stays open (held in the returned :class:`RawSocket`).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = _upgrade_headers()["Sec-WebSocket-Key"]
    writer.write(
        (
            f"GET /ws/v2/audio-stream?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    async with asyncio.timeout(15):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {}
    for line in head[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if status == 101:
        return RawSocket(status, headers, None, reader, writer)
    try:
        async with asyncio.timeout(10):
            raw = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return RawSocket(status, headers, json.loads(raw))
