"""The gateway's CPU per relayed frame, on loopback (a quick comparison of data planes or of source trees).

    PYTHONPATH=src .venv/bin/python scripts/relay_cpu.py [--streams 20] [--frames 500] [--rounds 2]
    PYTHONPATH=src .venv/bin/python scripts/relay_cpu.py --src /tmp/before/src --src src [--callgrind]

For each variant, alternately: one ``sttgate serve`` process (uvloop, SQLite, postpaid account, metering on) in front
of the AssemblyAI emulator in echo mode; ``--streams`` clients each send ``--frames`` binary frames of 100 ms of 16 kHz
PCM and wait for each echo. The gateway process's user+system CPU time (from ``/proc``) over the whole exchange,
divided by the frames it relayed (each frame twice: up and back down), is printed.

The variants are the data planes (``STTGATE_DATA_PLANE`` passthrough, then aiohttp), or with ``--src`` the given
source trees (each the gateway's ``PYTHONPATH``, passthrough data plane; e.g. a ``git archive`` of the commit before).
CPU time on a machine shared with other work is noisy; ``--callgrind`` runs each gateway under valgrind's callgrind,
counting only while the frames are relayed, and prints user-space instructions per relayed frame instead: the same
every run within a few per cent, whatever else the machine does (system calls are not counted; use fewer frames, it
is ~50x slower); ``--keep DIR`` keeps each run's dump for ``callgrind_annotate --inclusive=yes``, which shows what
the instructions were spent under (the read callbacks into the relay, the loop's other callbacks). The full
benchmark (``bench/``, with nginx side by side) remains the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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


async def run(*command: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await proc.wait()


def instructions(out: Path) -> int:
    """The instructions counted in callgrind's dumps (the one taken right after the exchange holds them)."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


async def measure(
    env_extra: dict[str, str], streams: int, frames: int, callgrind: bool, keep: Path | None = None
) -> float:
    """The gateway's figure per relayed frame; with ``keep``, callgrind's dump is copied there (for
    ``callgrind_annotate``)."""
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{tmp}/sttgate.db"
        out = Path(tmp) / "callgrind.out"
        async with running_emulator() as emulator, serve_processes() as spawn:
            store = await Store.connect(database, migrate=True)
            account = await create_account(store, max_streams=streams)
            await store.close()
            env = {**serve_env(emulator, database, "relay-cpu"), **env_extra}
            if callgrind:
                wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
                gateway = await spawn(env=env, cwd=Path(tmp), wrapper=wrapper, startup=600)
            else:
                gateway = await spawn(env=env, cwd=Path(tmp))
            query = f"provider=assemblyai&api_key={account.key}&sample_rate=16000&emu_echo=1"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                sockets = [await http.ws_connect(gateway.ws_url(query)) for _ in range(streams)]

                async def one(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
                    for _ in range(count):
                        await ws.send_bytes(FRAME)
                        await ws.receive(timeout=60)

                await asyncio.gather(*(one(ws, 1) for ws in sockets))  # warm: every session relays
                pid = str(gateway.proc.pid)
                before = cpu_seconds(gateway.proc.pid)
                if callgrind:
                    await run("callgrind_control", "-i", "on", pid)
                await asyncio.gather(*(one(ws, frames) for ws in sockets))
                used = cpu_seconds(gateway.proc.pid) - before
                if callgrind:
                    await run("callgrind_control", "-i", "off", pid)
                    await run("callgrind_control", "-d", pid)
                await asyncio.gather(*(ws.close() for ws in sockets))
            relayed = 2 * streams * frames
        if callgrind:
            if keep is not None:
                for dump in out.parent.glob(out.name + "*"):
                    if dump.stat().st_size:
                        shutil.copyfile(dump, keep)
            return instructions(out) / relayed
        return used / relayed * 1e6


def variants(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Each variant's name and environment; a source tree's path absolute (the gateway runs in a temporary
    directory)."""
    if args.src:
        return {src: {"STTGATE_DATA_PLANE": "passthrough", "PYTHONPATH": os.path.abspath(src)} for src in args.src}
    return {plane: {"STTGATE_DATA_PLANE": plane} for plane in ("passthrough", "aiohttp")}


async def main(args: argparse.Namespace) -> None:
    unit = "instructions (user space)" if args.callgrind else "µs CPU"
    print(f"load average at start: {os.getloadavg()}")
    for round_ in range(args.rounds):
        for index, (name, env) in enumerate(variants(args).items()):
            keep = None
            if args.keep is not None and args.callgrind:
                args.keep.mkdir(parents=True, exist_ok=True)
                keep = args.keep / f"round{round_ + 1}-variant{index + 1}.callgrind.out"
            figure = await measure(env, args.streams, args.frames, args.callgrind, keep)
            print(f"round {round_ + 1}  {name:24}  {figure:9,.1f} {unit} per relayed frame", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--src", action="append", default=[], metavar="DIR", help="a source tree to compare")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="with --callgrind: keep each run's dump in DIR (roundR-variantV)"
    )
    asyncio.run(main(parser.parse_args()))
