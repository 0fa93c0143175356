"""The ledger's hot statements on SQLite, with the usage outbox: a prepaid charge, and a postpaid flush of 200 sessions.

Run: ``PYTHONPATH=src .venv/bin/python bench/bench_ledger.py [SINK ...]`` (each SINK name is an ``[[export]]`` sink
the events are queued for). Prints microseconds per charge and milliseconds per flush; asserts nothing. Compare with
the same script on a tree without the outbox (it then ignores the sink names) to see what the outbox costs.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sttgate.core.outcomes import SessionKind
from sttgate.store import SessionProgress, Store

SESSIONS = 200
CHARGES = 2000
FLUSHES = 20
PRICE = 208_333


async def main(sinks: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.connect(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            outbox = getattr(store, "outbox", None)
            if outbox is not None:
                await outbox.register_sinks(sinks)
            prepaid = await store.create_account(name="prepaid", balance_nanos=10**15, max_streams=SESSIONS)
            postpaid = await store.create_account(name="postpaid", max_streams=SESSIONS)
            for i in range(SESSIONS):
                for prefix, account in (("pre", prepaid), ("post", postpaid)):
                    await store.open_session(
                        session_id=f"{prefix}{i}",
                        account_id=account.id,
                        kind=SessionKind.WEBSOCKET,
                        provider="assemblyai",
                        gateway_id="bench",
                        min_balance_nanos=0,
                        lease_ttl=3600,
                    )
            start = time.perf_counter()
            for i in range(CHARGES):
                await store.charge_cycles(f"pre{i % SESSIONS}", prepaid.id, 1, PRICE)
            charge_us = (time.perf_counter() - start) / CHARGES * 1e6
            start = time.perf_counter()
            for k in range(1, FLUSHES + 1):
                await store.flush_progress(
                    [SessionProgress(f"post{i}", 5.0 * k, k, k * PRICE) for i in range(SESSIONS)]
                )
            flush_ms = (time.perf_counter() - start) / FLUSHES * 1e3
        finally:
            await store.close()
    print(f"prepaid charge: {charge_us:.0f} us; flush of {SESSIONS} sessions, one new cycle each: {flush_ms:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
