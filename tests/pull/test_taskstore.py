"""Task rows on SQLite and, when reachable, PostgreSQL (each test in its own schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from sttgate.pull import taskstore
from sttgate.pull.webhooks import Attempt
from sttgate.store.store import Store, utcnow
from tests.support.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        store = await Store.connect(f"sqlite:///{tmp_path}/tasks.db")
        try:
            yield store
        finally:
            await store.close()
        return
    async with fresh_schema("sttgate_pull") as url:
        store = await Store.connect(url)
        try:
            yield store
        finally:
            await store.close()


async def new_task(store: Store, account_id: str, task_id: str, gateway: str = "gw-1") -> None:
    await store.open_session(
        session_id=task_id,
        account_id=account_id,
        kind="pull",
        provider="assemblyai",
        gateway_id=gateway,
        min_balance_nanos=0,
        lease_ttl=30,
    )
    await taskstore.insert_task(
        store,
        task_id=task_id,
        account_id=account_id,
        audio_url="rtsp://cam:secret@camera.example/stream",
        callback_url="https://hooks.example/x",
        provider="assemblyai",
        params="sample_rate=16000&encoding=pcm_s16le",
    )


async def test_task_lifecycle_rows(any_store: Store) -> None:
    store = any_store
    owner = (await store.create_account(name="owner"))["id"]
    other = (await store.create_account(name="other"))["id"]
    await new_task(store, owner, "t1")
    view = await taskstore.task_view(store, "t1", owner)
    assert view is not None
    assert (view["status"], view["stop_requested"], view["ended_at"]) == ("running", False, None)
    assert view["audio_url"] == "rtsp://cam:***@camera.example/stream"
    assert (view["audio_seconds"], view["billed_seconds"], view["cost_usd"]) == (0.0, 0, "0")
    assert await taskstore.task_view(store, "t1", other) is None
    assert await taskstore.request_stop(store, "t1", other) is None
    assert await taskstore.stop_requested(store, ["t1"]) == []
    assert await taskstore.request_stop(store, "t1", owner) == "running"
    assert await taskstore.stop_requested(store, ["t1", "unknown"]) == ["t1"]
    assert await taskstore.end_task(store, "t1", status="stopped", last_error=None)
    view = await taskstore.task_view(store, "t1", owner)
    assert view is not None and view["status"] == "stopped" and view["ended_at"] is not None
    log = taskstore.AttemptLog(store)
    await log.record(Attempt("t1", 1, 1, 500, "HTTP 500"))
    await log.record(Attempt("t1", 1, 2, 200, None))
    await log.close()
    attempts = await taskstore.attempts_of(store, "t1")
    assert [(a["seq"], a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (1, 1, 500, "HTTP 500"),
        (1, 2, 200, None),
    ]
    assert await taskstore.last_seq(store, "t1") == 1


async def test_crashed_tasks_are_claimed_once(any_store: Store) -> None:
    store = any_store
    owner = (await store.create_account(name="owner"))["id"]
    await new_task(store, owner, "dead", gateway="dead-gw")
    await new_task(store, owner, "alive", gateway="live-gw")
    assert await store.reap_dead_sessions(gateway_id="dead-gw") == ["dead"]
    since = utcnow() - timedelta(hours=1)
    claimed = await taskstore.claim_crashed(store, since=since)
    assert [(c.id, c.provider, c.callback_url) for c in claimed] == [("dead", "assemblyai", "https://hooks.example/x")]
    assert await taskstore.claim_crashed(store, since=since) == []
    view = await taskstore.task_view(store, "dead", owner)
    assert view is not None and (view["status"], view["last_error"]) == ("gateway_shutdown", taskstore.CRASHED)
    # The "dead" gateway was only stalled: its late ending must not replace the claim (nor send a second ended).
    assert not await taskstore.end_task(store, "dead", status="stopped", last_error=None)
    assert await taskstore.end_task(store, "alive", status="source_ended", last_error=None)
