"""One hop to SQLite's thread and back, as the fast path makes it (``store/sqlite_fast.py``'s ``_Worker``) and as a
single-thread ``ThreadPoolExecutor`` with ``run_in_executor`` makes it (what the fast path used before): the event
loop's CPU and the wall time per call, on uvloop, for a call that does almost nothing (so the hop is all there is).

Run: ``PYTHONPATH=src .venv/bin/python bench/bench_worker.py``. Prints microseconds per hop; asserts nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

from sttgate.store.sqlite_fast import _Worker

CALLS = 20_000


def _select_one(conn: sqlite3.Connection) -> Any:
    return conn.execute("SELECT 1").fetchone()


async def _measure(name: str, call: Callable[[], Awaitable[Any]]) -> None:
    for _ in range(CALLS // 10):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(CALLS):
        await call()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:>22}: {cpu / CALLS * 1e6:6.1f} us CPU per hop (both threads), {wall / CALLS * 1e6:6.1f} us wall")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "hop.db")
        worker = _Worker(path, "bench-worker")
        executor = ThreadPoolExecutor(max_workers=1)
        conn = sqlite3.connect(path, check_same_thread=False)
        loop = asyncio.get_running_loop()
        try:
            await _measure("run_in_executor", lambda: loop.run_in_executor(executor, _select_one, conn))
            await _measure("_Worker.run", lambda: worker.run(_select_one))
        finally:
            await worker.close()
            executor.shutdown()
            conn.close()


if __name__ == "__main__":
    uvloop.run(main())
