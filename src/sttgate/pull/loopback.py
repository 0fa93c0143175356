"""A TCP server on 127.0.0.1 between FFmpeg and a pull source: what the egress guard (:mod:`sttgate.pull.egress`)
and the RTSP/RTMP relay (:mod:`sttgate.pull.relay`) share.

Each accepted connection is a task the server keeps until it ends, so that closing the server stops listening and
cuts every connection through it (a stopped pull task leaves nothing connected). A connection that fails the usual
ways (reset, cut, timed out, short read) ends quietly; the subclass's :meth:`LoopbackServer.serve` says why it
refused one where that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

PIPE_CHUNK = 64 * 1024

# How a connection through the server ends without anything to report.
_QUIET = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


class LoopbackServer:
    """Serves :meth:`serve` for every connection to ``sock`` (or a new port on 127.0.0.1) once :meth:`start_serving`
    ran."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def serving(self) -> bool:
        """:meth:`start_serving` succeeded."""
        return self._server is not None

    async def start_serving(self, sock: socket.socket | None = None) -> int:
        """Listen on ``sock`` (already bound) or on a free port of 127.0.0.1; the port."""
        if sock is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        else:
            self._server = await asyncio.start_server(self._handle, sock=sock)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop_serving(self) -> None:
        """Stop listening and cut every connection (nothing when it never started)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.serve(reader, writer)
        except _QUIET:
            pass
        finally:
            self._connections.discard(task)
            await close_writer(writer)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` into ``writer`` until its end (passed on as end of file), or until either side fails."""
    try:
        while data := await reader.read(PIPE_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait for it, whatever the connection's state."""
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
