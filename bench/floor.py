"""The floor of the stack sttgate is built on: a WebSocket relay made of aiohttp alone, on uvloop, nothing else.

    python -m bench.floor --port P --upstream ws://127.0.0.1:U

Each client WebSocket is upgraded by ``aiohttp.web``, one WebSocket to the upstream is opened with
``aiohttp.ClientSession.ws_connect``, and messages are forwarded both ways until either side closes: no
authentication, no database, no metering, no billing, no passthrough. ``bench.run``'s ``aiohttp`` mode measures it
beside nginx and sttgate, so that a target is read against what the libraries sttgate must use cost by themselves
(docs/benchmarks.md#the-floor-of-the-stack): the handshake of one session here is the least any gateway that upgrades
with aiohttp and connects with aiohttp can spend.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web

from bench.upstream import raise_nofile, serve_app_until_stopped

_Socket = aiohttp.ClientWebSocketResponse | web.WebSocketResponse


async def _pipe(source: _Socket, target: _Socket) -> None:
    """Forward ``source``'s messages to ``target`` until ``source`` closes."""
    async for message in source:
        if message.type is aiohttp.WSMsgType.BINARY:
            await target.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.TEXT:
            await target.send_str(message.data)
        else:
            break


def app(upstream: str) -> web.Application:
    """The relay: every path and query is forwarded to ``upstream`` as it came, with the client's headers."""
    session: aiohttp.ClientSession | None = None

    async def relay(request: web.Request) -> web.WebSocketResponse:
        assert session is not None
        client = web.WebSocketResponse(max_msg_size=1 << 20)
        async with session.ws_connect(f"{upstream}{request.path_qs}", headers=request.headers.copy()) as provider:
            await client.prepare(request)
            up = asyncio.ensure_future(_pipe(client, provider))
            down = asyncio.ensure_future(_pipe(provider, client))
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            for task in (up, down):
                task.cancel()
            await provider.close()
        await client.close()
        return client

    async def start(_: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(_: web.Application) -> None:
        if session is not None:
            await session.close()

    application = web.Application()
    application.router.add_get("/{tail:.*}", relay)
    application.on_startup.append(start)
    application.on_cleanup.append(stop)
    return application


def main() -> None:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(serve_app_until_stopped(app(args.upstream), args.port, backlog=4096))


if __name__ == "__main__":
    main()
