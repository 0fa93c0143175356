"""``sttgate admin-tokens``, the revision-2 account fields and ``accounts credit`` (docs/cli.md), through the real
console script; their documents are the admin API's (docs/admin-api.md)."""

from __future__ import annotations

import asyncio

from sttgate.store import AdminTokenCheck, Store
from tests.cli.test_cli import Run, db_url, fails, ok_json, run

__all__ = ["db_url", "run"]  # fixtures


def test_admin_tokens_create_list_revoke(run: Run, db_url: str) -> None:
    created = ok_json(run("admin-tokens", "create", "--name", "billing backend", "--json"))
    token = created["token"]
    assert token.startswith("sta_") and created["prefix"] == token[:12] and created["name"] == "billing backend"
    listed = run("admin-tokens", "list", "--json")
    assert [t["id"] for t in ok_json(listed)] == [created["id"]]
    assert token not in listed.stdout
    human = run("admin-tokens", "create", "--name", "support")
    assert human.returncode == 0 and "only time" in human.stdout

    async def check() -> AdminTokenCheck:
        store = await Store.connect(db_url, migrate=False)
        try:
            return await store.admin_tokens.check(token)
        finally:
            await store.close()

    assert asyncio.run(check()) is AdminTokenCheck.VALID
    revoked = ok_json(run("admin-tokens", "revoke", created["id"], "--json"))
    assert revoked["revoked_at"] is not None and "token" not in revoked
    assert asyncio.run(check()) is AdminTokenCheck.REVOKED
    assert "no admin token" in fails(run("admin-tokens", "revoke", "nope"))
    assert fails(run("admin-tokens", "create", "--name", " ")).count("\n") == 1


def test_account_fields_are_set_shown_cleared_and_filtered(run: Run) -> None:
    account = ok_json(
        run(
            "accounts", "create", "--name", "Acme", "--balance", "5", "--external-id", "cus_9",
            "--webhook-url", "https://acme.example/hook", "--low-balance", "1.5", "--monthly-budget", "50", "--json",
        )
    )  # fmt: skip
    assert (account["external_id"], account["webhook_url"]) == ("cus_9", "https://acme.example/hook")
    assert (account["low_balance_usd"], account["monthly_budget_usd"]) == ("1.500000000", "50.000000000")
    human = run("accounts", "show", account["id"])
    assert "cus_9" in human.stdout and "50.000000000 USD" in human.stdout
    assert [a["id"] for a in ok_json(run("accounts", "list", "--external-id", "cus_9", "--json"))] == [account["id"]]
    assert ok_json(run("accounts", "list", "--external-id", "other", "--json")) == []
    updated = ok_json(run("accounts", "update", account["id"], "--webhook-url", "", "--low-balance", "", "--json"))
    assert (updated["webhook_url"], updated["low_balance_usd"], updated["external_id"]) == (None, None, "cus_9")
    taken = fails(run("accounts", "create", "--name", "Other", "--external-id", "cus_9"))
    assert "already used" in taken and taken.count("\n") == 1
    assert "webhook URL" in fails(run("accounts", "update", account["id"], "--webhook-url", "ftp://x"))


def test_accounts_credit_is_idempotent(run: Run) -> None:
    account = ok_json(run("accounts", "create", "--name", "Acme", "--balance", "1", "--json"))
    args = ("accounts", "credit", account["id"], "--amount", "2.50", "--idempotency-key", "inv-1")
    first = ok_json(run(*args, "--json"))
    assert (first["amount_usd"], first["balance_usd"]) == ("2.500000000", "3.500000000")
    assert ok_json(run(*args, "--json")) == first
    again = run(*args)
    assert again.returncode == 0 and "nothing added" in again.stdout
    assert ok_json(run("accounts", "show", account["id"], "--json"))["balance_usd"] == "3.500000000"
    assert "another amount" in fails(
        run("accounts", "credit", account["id"], "--amount", "3", "--idempotency-key", "inv-1")
    )
