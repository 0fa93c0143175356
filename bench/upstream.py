"""A minimal, fast AssemblyAI-shaped upstream: answers Begin, echoes every 5th audio frame as a Turn.

It is deliberately not the faithful emulator: the benchmark must measure the relay, so the upstream does
the least work that still exercises both directions. Run several with ``--reuse-port`` to spread it.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal

import uvloop
from aiohttp import WSMsgType, web

from bench.wire import (
    ASSEMBLYAI_PATH,
    BEGIN_MESSAGE,
    ECHO_EVERY,
    ECHO_TEMPLATE,
    STAMP,
    TERMINATION_MESSAGE,
)


async def _stream(request: web.Request) -> web.WebSocketResponse:
    """One provider session: Begin, then a Turn per ECHO_EVERY binary frames carrying the frame's stamp."""
    ws = web.WebSocketResponse(compress=False, autoping=True, max_msg_size=0)
    await ws.prepare(request)
    await ws.send_str(BEGIN_MESSAGE)
    count = 0
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            count += 1
            if count % ECHO_EVERY == 0:
                seq, stamp = STAMP.unpack_from(msg.data)
                await ws.send_str(ECHO_TEMPLATE % (seq, stamp))
        elif msg.type is WSMsgType.TEXT and '"Terminate"' in msg.data:
            await ws.send_str(TERMINATION_MESSAGE)
            await ws.close()
    return ws


def make_app() -> web.Application:
    """The upstream application; also used in-process by tests."""
    app = web.Application()
    app.router.add_get(ASSEMBLYAI_PATH, _stream)
    return app


async def _serve(port: int, reuse_port: bool) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_port=reuse_port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def raise_nofile() -> None:
    """Thousands of sockets per process need more than the usual 1,024 descriptors."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    """``python -m bench.upstream --port P``: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(_serve(args.port, args.reuse_port))


if __name__ == "__main__":
    main()
