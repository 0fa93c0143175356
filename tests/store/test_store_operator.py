"""The store's side of the admin API on SQLite and PostgreSQL: credits once per idempotency key (the unique
constraint as the backstop), the revision-2 account fields, operator close requests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store import ConflictError, NotFoundError, SlotOutcome, Store
from sttgate.store import accounts as accounts_module


async def test_a_credit_is_made_once_per_key_and_repeats_answer_it(store: Store) -> None:
    account = await store.create_account(name="c", balance_nanos=0)
    first = await store.credit(account.id, 5, "k")
    assert (first.balance_nanos, first.replayed) == (5, False)
    again = await store.credit(account.id, 5, "k")
    assert again.replayed and (again.id, again.balance_nanos, again.created_at) == (
        first.id,
        first.balance_nanos,
        first.created_at,
    )
    concurrent = await asyncio.gather(*(store.credit(account.id, 7, f"k{i % 3}") for i in range(9)))
    assert sum(not c.replayed for c in concurrent) == 3
    assert (await store.get_account(account.id)).balance_nanos == 5 + 3 * 7  # type: ignore[union-attr]
    other = await store.create_account(name="d", balance_nanos=0)
    assert not (await store.credit(other.id, 1, "k")).replayed  # keys are per account
    with pytest.raises(ConflictError):
        await store.credit(account.id, 6, "k")
    with pytest.raises(NotFoundError):
        await store.credit("nope", 1, "k")
    with pytest.raises(ValueError, match="more than zero"):
        await store.credit(account.id, 0, "z")


async def test_the_unique_constraint_stops_a_second_credit_the_lookup_missed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await store.create_account(name="c", balance_nanos=0)
    first = await store.credit(account.id, 5, "k")
    real = accounts_module._find_credit
    calls = 0

    async def blind_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real(*args)

    monkeypatch.setattr(accounts_module, "_find_credit", blind_once)
    again = await store.credit(account.id, 5, "k")  # inserts, hits the constraint, rolls back, reads the first
    assert again.replayed and again.id == first.id
    assert (await store.get_account(account.id)).balance_nanos == 5  # type: ignore[union-attr]


async def test_account_fields_are_kept_unless_given_and_external_ids_are_unique(store: Store) -> None:
    account = await store.create_account(
        name="f", external_id="x", webhook_url="https://a.example/h", low_balance_nanos=1, monthly_budget_nanos=2
    )
    changed = await store.update_account(account.id, max_streams=2, webhook_url=None)
    assert (changed.external_id, changed.webhook_url, changed.low_balance_nanos, changed.monthly_budget_nanos) == (
        "x",
        None,
        1,
        2,
    )
    with pytest.raises(ConflictError):
        await store.create_account(name="g", external_id="x")
    assert [a.id for a in await store.list_accounts(external_id="x")] == [account.id]
    with pytest.raises(ValueError, match="webhook URL"):
        await store.update_account(account.id, webhook_url="javascript:alert(1)")


async def test_close_requests_are_seen_until_the_session_ends(store: Store) -> None:
    account = await store.create_account(name="s")
    session_id = str(uuid.uuid4())
    opened = await store.open_session(
        session_id=session_id,
        account_id=account.id,
        kind=SessionKind.WEBSOCKET,
        provider="assemblyai",
        gateway_id="gw-a",
        min_balance_nanos=0,
        lease_ttl=30,
    )
    assert opened is SlotOutcome.OPENED
    assert await store.operator_sessions.close_requests() == set()
    requested = await store.operator_sessions.request_close(session_id)
    assert requested.close_requested_at is not None and requested.gateway_id == "gw-a"
    assert await store.operator_sessions.close_requests() == {session_id}
    again = await store.operator_sessions.request_close(session_id)
    assert again.close_requested_at == requested.close_requested_at
    await store.end_session(session_id, audio_seconds=0.0, cycles=0, cost_nanos=0, close_code=1008,
                            close_reason="closed by operator", closed_by=ClosedBy.GATEWAY)  # fmt: skip
    assert await store.operator_sessions.close_requests() == set()
    with pytest.raises(ConflictError):
        await store.operator_sessions.request_close(session_id)
