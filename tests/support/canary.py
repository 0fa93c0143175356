"""A TCP listener that must never be reached: it records every connection (and closes it at once)."""

from __future__ import annotations

import asyncio


class Canary:
    def __init__(self) -> None:
        self.connections: list[tuple[str, int]] = []
        self.reached = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._client, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer.get_extra_info("peername"))
        self.reached.set()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
