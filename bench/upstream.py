"""A minimal, fast AssemblyAI-shaped upstream at ``/v3/ws``: Begin, then a Turn per 5 audio frames.

It is deliberately not the faithful emulator: the benchmark measures the relay, so the upstream does the least
work that still exercises both directions (bench.ws.UpstreamProtocol). Several processes can share the port
(``--reuse-port``) if one ever shows up as the bottleneck; its CPU is reported with every step.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal

import uvloop
from aiohttp import web

from bench.ws import UpstreamProtocol


async def serve_app_until_stopped(app: web.Application, port: int, backlog: int) -> None:
    """Serve an aiohttp ``app`` on 127.0.0.1:``port`` until SIGTERM or SIGINT (the harness's helper servers)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=backlog).start()
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


async def serve(port: int, reuse_port: bool, stop: asyncio.Event) -> None:
    """Serve on 127.0.0.1:``port`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096, reuse_port=reuse_port)
    try:
        await stop.wait()
    finally:
        server.close()


async def _main(port: int, reuse_port: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(port, reuse_port, stop)


def main() -> None:
    """``python -m bench.upstream --port P``: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(_main(args.port, args.reuse_port))


if __name__ == "__main__":
    main()
