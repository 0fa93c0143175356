"""The admin API (docs/admin-api.md) on SQLite: admin tokens, accounts, credits, keys, usage, sessions, validation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store import Store
from tests.support.admin_api import AdminApi, running_admin_api
from tests.support.gateway import gateway_settings


@pytest.fixture
async def api(store: Store) -> AsyncIterator[AdminApi]:
    async with running_admin_api(gateway_settings("ws://127.0.0.1:9"), store) as running:
        yield running


def assert_error(body: Any, code: str) -> None:
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --- authentication ---------------------------------------------------------------------------------------------


async def test_no_token_is_401_unknown_is_401_revoked_is_403(api: AdminApi, store: Store) -> None:
    url = api.url("/accounts")
    async with api.http.get(url) as r:
        assert r.status == 401
        assert_error(await r.json(), "missing_admin_token")
    for header in ("Bearer sta_unknown", "Bearer sk-mai-whatever", "Basic abc", "Bearer "):
        async with api.http.get(url, headers={"Authorization": header}) as r:
            assert r.status == 401, header
            assert (await r.json())["error"]["code"] in ("invalid_admin_token", "missing_admin_token")
    made = await store.admin_tokens.create("to revoke")
    async with api.http.get(url, headers={"Authorization": f"Bearer {made.token}"}) as r:
        assert r.status == 200
    await store.admin_tokens.revoke(made.id)
    async with api.http.get(url, headers={"Authorization": f"Bearer {made.token}"}) as r:
        assert r.status == 403
        assert r.headers["Cache-Control"] == "no-store"
        assert_error(await r.json(), "admin_token_revoked")


async def test_the_openapi_document_needs_no_token(api: AdminApi) -> None:
    async with api.http.get(api.url("/openapi.json")) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"] == "3.1.0"
    assert "/admin/v1/accounts/{account_id}/credits" in doc["paths"]


async def test_admin_tokens_are_stored_hashed_and_listed_without_secret(store: Store) -> None:
    made = await store.admin_tokens.create("billing backend")
    assert made.token.startswith("sta_") and len(made.token) >= 4 + 43
    listed = await Admin(store, names()).list_admin_tokens()
    assert [t["name"] for t in listed] == ["billing backend"]
    assert "token" not in listed[0] and made.token not in str(listed)


# --- accounts -----------------------------------------------------------------------------------------------------


async def test_account_create_show_update_and_the_cli_document(api: AdminApi, store: Store) -> None:
    status, created = await api.call(
        "POST",
        "/accounts",
        json={
            "name": "Acme",
            "balance_usd": "5.00",
            "external_id": "cus_123",
            "webhook_url": "https://acme.example/events",
            "low_balance_usd": "1",
            "monthly_budget_usd": "100.5",
        },
    )
    assert status == 201, created
    assert created["balance_usd"] == "5.000000000"
    assert created["external_id"] == "cus_123"
    assert created["low_balance_usd"] == "1.000000000"
    assert created["monthly_budget_usd"] == "100.500000000"
    status, shown = await api.call("GET", f"/accounts/{created['id']}")
    assert (status, shown) == (200, created)
    # The same document as the CLI's --json (one service layer).
    assert await Admin(store, names()).get_account(created["id"]) == shown

    status, updated = await api.call(
        "PATCH", f"/accounts/{created['id']}", json={"webhook_url": None, "max_streams": 2, "low_balance_usd": "2"}
    )
    assert status == 200, updated
    assert (updated["webhook_url"], updated["max_streams"], updated["low_balance_usd"]) == (None, 2, "2.000000000")
    assert updated["external_id"] == "cus_123"  # not given: kept
    status, postpaid = await api.call("PATCH", f"/accounts/{created['id']}", json={"balance_usd": None})
    assert (status, postpaid["balance_usd"]) == (200, None)


async def test_external_id_is_unique_and_filters_the_list(api: AdminApi) -> None:
    status, first = await api.call("POST", "/accounts", json={"name": "a", "external_id": "x-1"})
    assert status == 201
    status, body = await api.call("POST", "/accounts", json={"name": "b", "external_id": "x-1"})
    assert status == 409
    assert_error(body, "conflict")
    status, other = await api.call("POST", "/accounts", json={"name": "b"})
    status, body = await api.call("PATCH", f"/accounts/{other['id']}", json={"external_id": "x-1"})
    assert status == 409
    status, page = await api.call("GET", "/accounts", params={"external_id": "x-1"})
    assert status == 200 and [a["id"] for a in page["data"]] == [first["id"]] and page["next_cursor"] is None


async def test_accounts_are_paged_with_a_cursor(api: AdminApi) -> None:
    made = [(await api.call("POST", "/accounts", json={"name": f"n{i}"}))[1]["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page = await api.call("GET", "/accounts", params=params)
        assert status == 200
        seen += [a["id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made
    status, body = await api.call("GET", "/accounts", params={"cursor": "nope"})
    assert status == 400
    assert_error(body, "invalid_request")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "x", "surprise": 1}, "surprise"),
        ({"name": 5}, "name"),
        ({"name": "x", "max_streams": "5"}, "max_streams"),
        ({"name": "x", "balance_usd": 5}, "balance_usd"),
        ({"name": "x", "balance_usd": "1e5"}, "balance_usd"),
        ({"name": "x", "streaming_enabled": 1}, "streaming_enabled"),
        ({"name": "   "}, "name"),
        ({"name": "x", "webhook_url": "ftp://x"}, "webhook_url"),
        ({}, "name"),
        ([], "body"),
    ],
)
async def test_bad_bodies_are_400_with_the_error_body(api: AdminApi, body: Any, fragment: str) -> None:
    status, answer = await api.call("POST", "/accounts", json=body)
    assert status == 400, answer
    assert_error(answer, "invalid_request")
    assert fragment in answer["error"]["message"]


async def test_not_json_and_unknown_paths_and_methods_answer_json(api: AdminApi) -> None:
    status, answer = await api.call("POST", "/accounts", data=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400
    assert_error(answer, "invalid_request")
    status, answer = await api.call("GET", "/accounts/no-such-account")
    assert status == 404
    assert_error(answer, "not_found")
    status, answer = await api.call("GET", "/nothing-here")
    assert status == 404
    assert_error(answer, "not_found")
    status, answer = await api.call("PUT", "/accounts")
    assert status == 405
    assert_error(answer, "method_not_allowed")


# --- credits ------------------------------------------------------------------------------------------------------


async def test_a_credit_posted_twice_with_one_key_credits_once(api: AdminApi, store: Store) -> None:
    _, account = await api.call("POST", "/accounts", json={"name": "p", "balance_usd": "1"})
    path = f"/accounts/{account['id']}/credits"
    async with api.http.post(
        api.url(path), headers=api.auth, json={"amount_usd": "10.00", "idempotency_key": "k1"}
    ) as r:
        assert r.status == 200 and r.headers["Idempotent-Replayed"] == "false"
        first = await r.json()
    assert first["amount_usd"] == "10.000000000" and first["balance_usd"] == "11.000000000"
    async with api.http.post(
        api.url(path), headers=api.auth, json={"amount_usd": "10.00", "idempotency_key": "k1"}
    ) as r:
        assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true"
        assert await r.json() == first
    # Concurrent repeats, and one new key among them.
    answers = await asyncio.gather(
        *(api.call("POST", path, json={"amount_usd": "10.00", "idempotency_key": "k1"}) for _ in range(5)),
        api.call("POST", path, json={"amount_usd": "0.5", "idempotency_key": "k2"}),
    )
    assert all(a == (200, first) for a in answers[:5])
    assert answers[5][0] == 200 and answers[5][1]["balance_usd"] == "11.500000000"
    assert (await store.get_account(account["id"])).balance_nanos == 11_500_000_000  # type: ignore[union-attr]
    # The same key with another amount is a conflict, not a second credit.
    status, body = await api.call("POST", path, json={"amount_usd": "3", "idempotency_key": "k1"})
    assert status == 409
    assert_error(body, "conflict")


async def test_credits_refuse_postpaid_accounts_and_unknown_accounts(api: AdminApi) -> None:
    _, account = await api.call("POST", "/accounts", json={"name": "postpaid"})
    status, body = await api.call(
        "POST", f"/accounts/{account['id']}/credits", json={"amount_usd": "1", "idempotency_key": "k"}
    )
    assert status == 409
    assert_error(body, "conflict")
    status, body = await api.call("POST", "/accounts/none/credits", json={"amount_usd": "1", "idempotency_key": "k"})
    assert status == 404
    status, body = await api.call(
        "POST", f"/accounts/{account['id']}/credits", json={"amount_usd": "0", "idempotency_key": "k"}
    )
    assert status == 400


# --- keys, usage, sessions -------------------------------------------------------------------------------------------


async def test_keys_create_list_revoke(api: AdminApi, store: Store) -> None:
    _, account = await api.call("POST", "/accounts", json={"name": "k"})
    async with api.http.post(api.url(f"/accounts/{account['id']}/keys"), headers=api.auth) as r:
        assert r.status == 201
        key = await r.json()
    assert key["key"].startswith("sk-mai-")
    assert (await store.authenticate(key["key"])) is not None
    status, listed = await api.call("GET", f"/accounts/{account['id']}/keys")
    assert status == 200 and [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    status, revoked = await api.call("DELETE", f"/keys/{key['id']}")
    assert status == 200 and revoked["revoked_at"] is not None
    assert (await store.authenticate(key["key"])) is None
    status, _body = await api.call("DELETE", "/keys/none")
    assert status == 404


async def test_usage_is_the_cli_document_and_reads_the_window_like_it(api: AdminApi, store: Store) -> None:
    _, account = await api.call("POST", "/accounts", json={"name": "u", "balance_usd": "2"})
    status, usage = await api.call("GET", f"/accounts/{account['id']}/usage", params={"since": "2026-01-01"})
    assert status == 200
    assert usage == await Admin(store, names()).usage(account["id"])
    status, body = await api.call("GET", f"/accounts/{account['id']}/usage", params={"since": "yesterday"})
    assert status == 400
    assert_error(body, "invalid_request")
    status, body = await api.call("GET", "/accounts/none/usage")
    assert status == 404


async def test_sessions_query_parameters_are_checked(api: AdminApi) -> None:
    status, page = await api.call("GET", "/sessions", params={"live": "true"})
    assert (status, page) == (200, {"data": [], "next_cursor": None})
    for params in ({"live": "yes"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"cursor": "none"}):
        status, body = await api.call("GET", "/sessions", params=params)
        assert status == 400, params
        assert_error(body, "invalid_request")
    status, body = await api.call("POST", "/sessions/none/close")
    assert status == 404


async def test_a_body_too_large_is_refused_unread(api: AdminApi) -> None:
    status, answer = await api.call("POST", "/accounts", json={"name": "x" * 70_000})
    assert status == 400
    assert_error(answer, "invalid_request")
    assert "larger than" in answer["error"]["message"]
