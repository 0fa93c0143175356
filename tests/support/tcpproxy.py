"""A TCP proxy a test can stop and start again on the same port: a database that refuses connections, then returns.

With ``tls``, it is also a TLS front (it decrypts, the target speaks plain TCP): an RTMPS server made of an RTMP one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``host:port`` of the target; :meth:`stop` aborts every connection and closes the
    listener (new connections are refused), :meth:`start` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.target = (target_host, target_port)
        self.tls = tls
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
