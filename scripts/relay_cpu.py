"""The gateway's CPU per relayed frame, passthrough against aiohttp data plane, on loopback (a quick comparison).

    PYTHONPATH=src .venv/bin/python scripts/relay_cpu.py [--streams 20] [--frames 500] [--rounds 2]

For each data plane (``STTGATE_DATA_PLANE``), alternately: one ``sttgate serve`` process (uvloop, SQLite, postpaid
account, metering on) in front of the AssemblyAI emulator in echo mode; ``--streams`` clients each send ``--frames``
binary frames of 100 ms of 16 kHz PCM and wait for each echo. The gateway process's user+system CPU time (from
``/proc``) over the whole exchange, divided by the frames it relayed (each frame twice: up and back down), is printed.
The full benchmark (``bench/``, with nginx side by side) remains the reference; this isolates the data plane.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.accounts import create_account
from tests.support.emulator import running_emulator
from tests.support.serve import serve_env, serve_processes

from sttgate.store import Store

FRAME = b"\x00" * 3200


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(plane: str, streams: int, frames: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{tmp}/sttgate.db"
        async with running_emulator() as emulator, serve_processes() as spawn:
            store = await Store.connect(database, migrate=True)
            account = await create_account(store, max_streams=streams)
            await store.close()
            env = {**serve_env(emulator, database, "relay-cpu"), "STTGATE_DATA_PLANE": plane}
            gateway = await spawn(env=env, cwd=Path(tmp))
            query = f"provider=assemblyai&api_key={account.key}&sample_rate=16000&emu_echo=1"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                sockets = [await http.ws_connect(gateway.ws_url(query)) for _ in range(streams)]

                async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
                    for _ in range(frames):
                        await ws.send_bytes(FRAME)
                        await ws.receive(timeout=30)

                before = cpu_seconds(gateway.proc.pid)
                await asyncio.gather(*(one(ws) for ws in sockets))
                used = cpu_seconds(gateway.proc.pid) - before
                await asyncio.gather(*(ws.close() for ws in sockets))
            return used / (2 * streams * frames) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    for round_ in range(args.rounds):
        for plane in ("passthrough", "aiohttp"):
            us = await measure(plane, args.streams, args.frames)
            print(f"round {round_ + 1}  {plane:12}  {us:6.1f} µs CPU per relayed frame", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
