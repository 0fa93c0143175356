"""Task rows on SQLite and, when reachable, PostgreSQL (each test in its own schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from sttgate.pull.documents import task_document
from sttgate.pull.webhooks import Attempt
from sttgate.store import Store
from sttgate.store.database import utcnow
from sttgate.store.tasks import CRASHED, AttemptLog
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


async def new_task(store: Store, account_id: str, task_id: str, lease_ttl: float = 30) -> None:
    await store.open_session(
        session_id=task_id,
        account_id=account_id,
        kind="pull",
        provider="assemblyai",
        gateway_id="gw-1",
        min_balance_nanos=0,
        lease_ttl=lease_ttl,
    )
    await store.tasks.insert_task(
        task_id=task_id,
        account_id=account_id,
        audio_url="rtsp://cam:secret@camera.example/stream",
        callback_url="https://hooks.example/x",
        provider="assemblyai",
        params="sample_rate=16000&encoding=pcm_s16le",
    )


async def task_view(store: Store, task_id: str, account_id: str) -> dict | None:
    """The task's document as ``GET …/tasks/{id}`` serves it."""
    row = await store.tasks.get(task_id, account_id)
    return None if row is None else task_document(row)


async def test_task_lifecycle_rows(any_store: Store) -> None:
    store = any_store
    owner = (await store.create_account(name="owner")).id
    other = (await store.create_account(name="other")).id
    await new_task(store, owner, "t1")
    view = await task_view(store, "t1", owner)
    assert view is not None
    assert (view["status"], view["stop_requested"], view["ended_at"]) == ("running", False, None)
    assert view["audio_url"] == "rtsp://cam:***@camera.example/stream"
    assert (view["audio_seconds"], view["billed_seconds"], view["cost_usd"]) == (0.0, 0, "0")
    assert await task_view(store, "t1", other) is None
    assert await store.tasks.request_stop("t1", other) is None
    assert await store.tasks.stop_requested(["t1"]) == []
    assert await store.tasks.request_stop("t1", owner) == "running"
    assert await store.tasks.stop_requested(["t1", "unknown"]) == ["t1"]
    assert await store.tasks.end_task("t1", status="stopped", last_error=None)
    view = await task_view(store, "t1", owner)
    assert view is not None and view["status"] == "stopped" and view["ended_at"] is not None
    log = AttemptLog(store.tasks)
    await log.record(Attempt("t1", 1, 1, 500, "HTTP 500"))
    await log.record(Attempt("t1", 1, 2, 200, None))
    await log.close()
    attempts = await store.tasks.attempts_of("t1")
    assert [(a["seq"], a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (1, 1, 500, "HTTP 500"),
        (1, 2, 200, None),
    ]
    assert await store.tasks.last_seq("t1") == 1


async def test_crashed_tasks_are_claimed_once(any_store: Store) -> None:
    store = any_store
    owner = (await store.create_account(name="owner")).id
    await new_task(store, owner, "dead", lease_ttl=-1)  # its gateway stopped renewing the lease
    await new_task(store, owner, "alive")
    assert await store.reap_dead_sessions() == ["dead"]
    since = utcnow() - timedelta(hours=1)
    claimed = await store.tasks.claim_crashed(since=since)
    assert [(c.id, c.provider, c.callback_url) for c in claimed] == [("dead", "assemblyai", "https://hooks.example/x")]
    assert await store.tasks.claim_crashed(since=since) == []
    view = await task_view(store, "dead", owner)
    assert view is not None and (view["status"], view["last_error"]) == ("gateway_shutdown", CRASHED)
    # The "dead" gateway was only stalled: its late ending must not replace the claim (nor send a second ended).
    assert not await store.tasks.end_task("dead", status="stopped", last_error=None)
    assert await store.tasks.end_task("alive", status="source_ended", last_error=None)
