"""One scrape of ``serve --workers 2`` reports both workers (docs/operations.md#several-workers): their open
sessions summed, their frames summed, each worker's process figures labelled by pid; a worker that dies stops
counting among the open sessions, and the metrics directory of the start is gone after it."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path

import aiohttp
from yarl import URL

from tests.support.serve import ServeProcess, free_port, serve_env, serve_processes
from tests.support.waiting import wait_for

SESSIONS_MAX = 24


async def scrape(sp: ServeProcess) -> str:
    # A new connection each time: SO_REUSEPORT may hand it to either worker, and each must answer for both.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{sp.admin_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def value(metrics: str, sample: str) -> float | None:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else None


def workers_of_sessions(sp: ServeProcess) -> Counter[str]:
    """Sessions per worker (``metrics/0``, ``metrics/1``: the gateway id without this start's ``#<start>``)."""
    return Counter(re.findall(r"event=session_start .*gateway=([^\s#]+)", sp.log))


async def test_one_scrape_reports_every_worker(emulator, account, tmp_path: Path) -> None:
    acct = await account(max_streams=SESSIONS_MAX)
    env = {
        **serve_env(emulator, f"sqlite:///{tmp_path / 'sttgate.db'}", "metrics"),
        "STTGATE_DRAIN_SECONDS": "0",
        "TMPDIR": str(tmp_path),  # where the parent makes the metrics directory of this start
    }
    async with serve_processes() as spawn, aiohttp.ClientSession() as http:
        sp = await spawn("--workers", "2", "--port", str(free_port()), env=env, cwd=tmp_path, admin=True)
        await wait_for(lambda: sp.log.count("event=admin_listening") == 2, timeout=30, what="both workers listening")
        # worker (metrics/0, metrics/1: the gateway id without "#<start>") -> pid, from each worker's own line
        listening = re.findall(r"event=gateway_listening gateway=([^\s#]+)\S* .*pid=(\d+)", sp.log)
        pids = {gw: int(pid) for gw, pid in listening}
        assert len(pids) == 2
        url = URL(
            f"http://127.0.0.1:{sp.port}/ws/v2/audio-stream?provider=assemblyai&api_key={acct.key}&emu_echo=1",
            encoded=True,
        )
        sockets = []
        # SO_REUSEPORT spreads connections by a hash of their addresses: open sessions until both workers hold some.
        while len(workers_of_sessions(sp)) < 2:
            assert len(sockets) < SESSIONS_MAX, "every session landed on one worker"
            ws = await http.ws_connect(url)
            sockets.append(ws)
            await ws.send_bytes(b"\x00" * 320)
            assert (await ws.receive(timeout=5)).data == b"\x00" * 320
            await wait_for(lambda: sum(workers_of_sessions(sp).values()) == len(sockets), what="session_start lines")
        opened = len(sockets)
        per_worker = workers_of_sessions(sp)

        async def both_workers_frames() -> str | None:
            metrics = await scrape(sp)
            frames = 'sttgate_frames_total{direction="client_to_provider",provider="assemblyai"}'
            return metrics if value(metrics, frames) == opened else None

        metrics = await wait_for(both_workers_frames, what="every worker's frames in one scrape")
        for _ in range(4):  # whichever worker answers
            assert value(await scrape(sp), 'sttgate_sessions_open{provider="assemblyai"}') == opened
        for pid in pids.values():
            assert (value(metrics, f'process_resident_memory_bytes{{pid="{pid}"}}') or 0) > 0
            assert (value(metrics, f'process_open_fds{{pid="{pid}"}}') or 0) > 0
            assert value(metrics, f'process_cpu_seconds_total{{pid="{pid}"}}') is not None

        # A worker that dies: its open sessions stop counting, the other worker's still do.
        os.kill(pids["metrics/1"], signal.SIGKILL)  # a worker of the serve this test started
        survivors = per_worker["metrics/0"]

        async def only_survivors() -> bool:
            return value(await scrape(sp), 'sttgate_sessions_open{provider="assemblyai"}') == survivors

        await wait_for(only_survivors, what="the dead worker's sessions no longer counted")
        sp.proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            await ws.receive(timeout=10)
            await ws.close()
        assert await sp.wait(timeout=30) == 1  # a worker did not exit cleanly
    assert not [name for name in os.listdir(tmp_path) if name.startswith("sttgate-metrics-")]
