"""The ledger's hot statements on SQLite, with the usage outbox: a prepaid charge, a postpaid flush of 200 sessions,
the background write of a hold-paid cycle alone and in group-committed batches (``Store.settle_cycles_batch``, the
gateway's CPU per write included); and how long a frame that opens a prepaid cycle waits (docs/billing.md#holds).

Run: ``PYTHONPATH=src .venv/bin/python bench/bench_ledger.py [SINK ...]`` (each SINK name is an ``[[export]]`` sink
the events are queued for). Prints microseconds per charge and milliseconds per flush; asserts nothing. Compare with
the same script on a tree without the outbox (it then ignores the sink names) to see what the outbox costs.

The frame's wait is measured over the real store, the two ways a cycle can be paid: charged while the frame waits
(``charge_cycles``, what every prepaid cycle awaited before holds) and paid by a hold (the session's own core,
``Billing``, says ``Action.RECORD``: the frame goes at once and the write runs as a task, as ``LiveSession`` does it;
the write is awaited after the measured span, as the next cycle's 5 s of audio would leave it time to).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sttgate.core.billing import Action, Billing, LedgerWrite
from sttgate.core.metering import Meter
from sttgate.core.outcomes import SessionKind
from sttgate.store import SessionProgress, SettleRequest, Store

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
            settles = {}
            for size in (1, 10, 50):
                requests = [
                    SettleRequest(f"pre{i}", prepaid.id, PRICE, LedgerWrite(recorded=1, hold=1))
                    for i in range(SESSIONS)
                ]
                cpu = time.process_time()
                for k in range(0, SESSIONS, size):
                    await store.settle_cycles_batch(requests[k : k + size])
                settles[size] = (time.process_time() - cpu) / SESSIONS * 1e6
            waits = {}
            waiting = await store.create_account(name="waits", balance_nanos=10**15, max_streams=2)
            for name, holds in (("charged while the frame waits", 0), ("paid by a hold", 1)):
                session_id = f"wait{holds}"
                await store.open_session(
                    session_id=session_id,
                    account_id=waiting.id,
                    kind=SessionKind.WEBSOCKET,
                    provider="assemblyai",
                    gateway_id="bench",
                    min_balance_nanos=PRICE,
                    lease_ttl=3600,
                )
                waits[name] = await frame_waits(store, session_id, waiting.id, holds)
        finally:
            await store.close()
    print(f"prepaid charge: {charge_us:.0f} us; flush of {SESSIONS} sessions, one new cycle each: {flush_ms:.1f} ms")
    for size, cpu_us in settles.items():
        print(f"background write of a hold-paid cycle, in batches of {size}: {cpu_us:.0f} us of CPU each")
    for name, (wait_us, awaited) in waits.items():
        print(f"frame opening a prepaid cycle, {name}: waits {wait_us:.1f} us, {awaited} database calls awaited")


async def frame_waits(store: Store, session_id: str, account_id: str, holds: int) -> tuple[float, int]:
    """Mean time from metering a frame that opens a cycle to that frame being free to go, and the ledger calls it
    awaited in all, over ``CHARGES`` cycles of one session. ``holds=0``: every cycle charged while its frame waits (the
    statement every prepaid cycle awaited before holds); 1: the session's hold pays each cycle."""
    billing = Billing(Meter(), prepaid=True, price_nanos=PRICE, holds=holds)
    waited = 0.0
    awaited = 0
    for _ in range(CHARGES):
        start = time.perf_counter()
        task = None
        if not holds:
            await store.charge_cycles(session_id, account_id, 1, PRICE)
            awaited += 1
        elif billing.opened(1) is Action.RECORD:
            write = billing.next_write()
            assert write is not None
            task = asyncio.create_task(store.settle_cycles(session_id, account_id, PRICE, write))
        waited += time.perf_counter() - start
        if task is not None:
            billing.wrote(await task)
    return waited / CHARGES * 1e6, awaited


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
