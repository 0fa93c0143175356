"""Accounts, keys, webhook secrets and migrations, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store import NotFoundError, Store
from sttgate.store.db import current_revision, head_revision, make_engine, upgrade


async def test_migrations_are_idempotent(db_url: str) -> None:
    await upgrade(db_url)
    await upgrade(db_url)
    assert await current_revision(db_url) == head_revision() == "0011"


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


async def test_create_and_read_accounts(store: Store, admin: Admin) -> None:
    postpaid = await admin.create_account(name="Acme")
    assert postpaid["name"] == "Acme"
    assert postpaid["max_streams"] == 5
    assert postpaid["streaming_enabled"] is True
    assert postpaid["balance_usd"] is None
    assert set(postpaid) == {
        "id",
        "name",
        "streaming_enabled",
        "max_streams",
        "balance_usd",
        "external_id",
        "webhook_url",
        "low_balance_usd",
        "monthly_budget_usd",
        "created_at",
        "updated_at",
    }
    assert postpaid["external_id"] is postpaid["webhook_url"] is None
    assert postpaid["low_balance_usd"] is postpaid["monthly_budget_usd"] is None
    assert postpaid["created_at"].endswith("Z")
    assert datetime.fromisoformat(postpaid["created_at"]).utcoffset().total_seconds() == 0

    prepaid = await admin.create_account(
        name="Beta", max_streams=2, balance_nanos=1_500_000_000, streaming_enabled=False
    )
    assert prepaid["balance_usd"] == "1.500000000"
    assert prepaid["streaming_enabled"] is False
    assert prepaid["max_streams"] == 2

    assert await admin.get_account(prepaid["id"]) == prepaid
    assert await admin.get_account("no-such-account") is None
    assert [a["id"] for a in await admin.list_accounts()] == [postpaid["id"], prepaid["id"]]


async def test_update_account(store: Store, admin: Admin) -> None:
    acct = await admin.create_account(name="Acme", balance_nanos=1_000)
    updated = await admin.update_account(acct["id"], name="Acme Corp", max_streams=9, streaming_enabled=False)
    assert (updated["name"], updated["max_streams"], updated["streaming_enabled"]) == ("Acme Corp", 9, False)
    assert updated["updated_at"] >= acct["updated_at"]

    assert (await admin.update_account(acct["id"], top_up_nanos=500))["balance_usd"] == "0.000001500"
    assert (await admin.update_account(acct["id"], set_balance_nanos=0))["balance_usd"] == "0"
    assert (await admin.update_account(acct["id"], postpaid=True))["balance_usd"] is None
    with pytest.raises(ValueError, match="postpaid"):
        await admin.update_account(acct["id"], top_up_nanos=5)
    assert (await admin.update_account(acct["id"], set_balance_nanos=7))["balance_usd"] == "0.000000007"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_up_nanos": -1},
        {"top_up_nanos": 0},
        {"set_balance_nanos": -1},
        {"max_streams": -1},
        {"name": "  "},
        {"set_balance_nanos": 1, "top_up_nanos": 1},
        {"postpaid": True, "set_balance_nanos": 1},
    ],
)
async def test_update_account_refuses_bad_values(store: Store, admin: Admin, kwargs: dict) -> None:
    acct = await admin.create_account(name="Acme", balance_nanos=10)
    with pytest.raises(ValueError):
        await admin.update_account(acct["id"], **kwargs)
    assert await admin.get_account(acct["id"]) == acct


async def test_unknown_account_is_not_found(store: Store, admin: Admin) -> None:
    with pytest.raises(NotFoundError):
        await admin.update_account("nope", name="x")
    with pytest.raises(NotFoundError):
        await admin.create_key("nope")
    with pytest.raises(NotFoundError):
        await admin.list_keys("nope")
    with pytest.raises(NotFoundError):
        await admin.revoke_key("nope")
    with pytest.raises(NotFoundError):
        await store.webhook_secret("nope")
    with pytest.raises(NotFoundError):
        await admin.usage("nope")
    with pytest.raises(ValueError):
        await admin.create_account(name="x", balance_nanos=-1)


async def test_keys_authenticate_list_and_revoke(store: Store, admin: Admin) -> None:
    acct = await admin.create_account(name="Acme", max_streams=3, balance_nanos=42)
    created = await admin.create_key(acct["id"])
    key = created["key"]
    assert key.startswith("sk-mai-")
    assert len(key) >= 39
    assert created["prefix"] == key[:12]
    assert created["account_id"] == acct["id"]

    principal = await store.authenticate(key)
    assert principal is not None
    assert (principal.account_id, principal.key_id) == (acct["id"], created["id"])
    assert (principal.max_streams, principal.balance_nanos, principal.streaming_enabled) == (3, 42, True)

    (listed,) = await admin.list_keys(acct["id"])
    assert set(listed) == {
        "id",
        "prefix",
        "name",
        "expires_at",
        "max_streams",
        "providers",
        "created_at",
        "last_used_at",
        "revoked_at",
    }
    assert (listed["id"], listed["prefix"], listed["created_at"]) == (
        created["id"],
        created["prefix"],
        created["created_at"],
    )
    assert listed["revoked_at"] is None
    assert key not in str(listed)

    revoked = await admin.revoke_key(created["id"])
    assert revoked["revoked_at"] is not None
    assert await store.authenticate(key) is None
    assert (await admin.revoke_key(created["id"]))["revoked_at"] == revoked["revoked_at"]

    other = await admin.create_key(acct["id"])
    assert (await store.authenticate(other["key"])).key_id == other["id"]
    assert len(await admin.list_keys(acct["id"])) == 2


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "sk-mai-",
        "sk-mai-short",
        "sk-mai-" + "A" * 43,
        "Bearer sk-mai-" + "A" * 43,
        "sk-mai-" + "é" * 43,
        "sk-mai-" + "A" * 500,
    ],
)
async def test_unknown_and_malformed_keys_are_refused(store: Store, admin: Admin, candidate: str) -> None:
    acct = await admin.create_account(name="Acme")
    await admin.create_key(acct["id"])
    assert await store.authenticate(candidate) is None


async def test_last_used_is_recorded(db_url: str) -> None:
    store = await Store.connect(db_url)
    admin = Admin(store, names())
    acct = await admin.create_account(name="Acme")
    created = await admin.create_key(acct["id"])
    assert await store.authenticate(created["key"]) is not None
    await store.close()  # waits for the background write

    store = await Store.connect(db_url)
    try:
        (listed,) = await Admin(store, names()).list_keys(acct["id"])
        assert listed["last_used_at"] is not None
        assert listed["last_used_at"] >= created["created_at"]
    finally:
        await store.close()


async def test_webhook_secret_is_stable_until_rotated(store: Store, admin: Admin) -> None:
    acct = await admin.create_account(name="Acme")
    first = await store.webhook_secret(acct["id"])
    assert len(first) >= 32
    assert await store.webhook_secret(acct["id"]) == first
    rotated = await store.webhook_secret(acct["id"], rotate=True)
    assert rotated != first
    assert await store.webhook_secret(acct["id"]) == rotated
    other = await admin.create_account(name="Other")
    assert await store.webhook_secret(other["id"]) not in (first, rotated)


async def test_migrations_match_the_tables(db_url: str) -> None:
    """The migrated schema is exactly tables.py: a change to one without the other fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sttgate.store.tables import metadata

    await upgrade(db_url)
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_ping_fails_cleanly_when_the_database_is_gone() -> None:
    store = Store(make_engine("postgresql://nobody@127.0.0.1:1/none"))
    try:
        assert await store.ping() is False
    finally:
        await store.close()


async def test_migration_0004_marks_past_refused_handshakes(db_url: str) -> None:
    """Rows written before ``sessions.opening`` existed: the handshakes refused after the slot (ended by the gateway
    with no close code, nothing charged) leave usage; every other row stays a session."""
    from sqlalchemy import insert, select

    from sttgate.store.tables import accounts, sessions

    await upgrade(db_url, "0001")
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    base = {"account_id": "a", "kind": "websocket", "provider": "assemblyai", "gateway_id": "gw", "started_at": now}
    base |= {"lease_expires_at": now, "audio_seconds": 0.0, "cost_nanos": 0}
    legacy = {
        "refused": {"ended_at": now, "closed_by": "gateway", "close_code": None, "cycles": 0},
        "cut_off": {"ended_at": now, "closed_by": "gateway", "close_code": 4002, "cycles": 0},
        "charged": {"ended_at": now, "closed_by": "gateway", "close_code": None, "cycles": 1},
        "client": {"ended_at": now, "closed_by": "client", "close_code": None, "cycles": 0},
        "live": {"ended_at": None, "closed_by": None, "close_code": None, "cycles": 0},
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(accounts).values(
                    id="a",
                    name="A",
                    streaming_enabled=True,
                    max_streams=5,
                    webhook_secret="s",
                    created_at=now,
                    updated_at=now,
                )
            )
            for sid, values in legacy.items():
                await conn.execute(insert(sessions).values(id=sid, **base, **values))
        await upgrade(db_url)
        async with engine.connect() as conn:
            opening = {r.id: r.opening for r in await conn.execute(select(sessions.c.id, sessions.c.opening))}
    finally:
        await engine.dispose()
    assert opening == {"refused": True, "cut_off": False, "charged": False, "client": False, "live": False}
