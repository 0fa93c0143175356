"""The operator's operations as documents: what the CLI prints and the admin API serves (docs/admin-api.md).

Both front ends call these methods and print or serve what they return, so ``sttgate … --json`` and the admin API
answer with the same documents. Lists the API pages come back as ``{"data": [...], "next_cursor": ...}``
(:func:`sttgate.admin.documents.page`); the CLI prints the whole list as an array of the same items.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sttgate.admin.documents import (
    account_view,
    admin_token_view,
    credit_view,
    key_view,
    new_admin_token_view,
    new_key_view,
    page,
    session_view,
    usage_document,
)
from sttgate.store import KEEP, Keep, Store
from sttgate.store.accounts import KeyOptions

DEFAULT_PAGE = 100


class Admin:
    """Store operations that answer with documents; ``providers`` are the providers the usage totals list."""

    def __init__(self, store: Store, providers: Sequence[str]) -> None:
        self.store = store
        self.providers = tuple(providers)

    async def usage(
        self,
        account_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
    ) -> dict[str, Any]:
        """The usage document of sessions that started in ``[since, until)``, newest first (only ``key_id``'s with
        one)."""
        return usage_document(await self.store.usage(account_id, since, until, key_id), self.providers)

    # -- accounts ---------------------------------------------------------------------------------------------------

    async def create_account(
        self,
        *,
        name: str,
        max_streams: int = 5,
        balance_nanos: int | None = None,
        streaming_enabled: bool = True,
        external_id: str | None = None,
        webhook_url: str | None = None,
        low_balance_nanos: int | None = None,
        monthly_budget_nanos: int | None = None,
    ) -> dict[str, Any]:
        return account_view(
            await self.store.create_account(
                name=name,
                max_streams=max_streams,
                balance_nanos=balance_nanos,
                streaming_enabled=streaming_enabled,
                external_id=external_id,
                webhook_url=webhook_url,
                low_balance_nanos=low_balance_nanos,
                monthly_budget_nanos=monthly_budget_nanos,
            )
        )

    async def list_accounts(self, *, external_id: str | None = None) -> list[dict[str, Any]]:
        """Every account, oldest first (the CLI's list)."""
        return [account_view(a) for a in await self.store.list_accounts(external_id=external_id)]

    async def accounts_page(
        self, *, external_id: str | None = None, cursor: str | None = None, limit: int = DEFAULT_PAGE
    ) -> dict[str, Any]:
        """One page of accounts, oldest first, after the account ``cursor`` names."""
        accounts = await self.store.list_accounts(external_id=external_id, after=cursor, limit=limit + 1)
        return page([account_view(a) for a in accounts], limit)

    async def get_account(self, account_id: str) -> dict[str, Any] | None:
        account = await self.store.get_account(account_id)
        return None if account is None else account_view(account)

    async def update_account(
        self,
        account_id: str,
        *,
        name: str | None = None,
        max_streams: int | None = None,
        streaming_enabled: bool | None = None,
        set_balance_nanos: int | None = None,
        top_up_nanos: int | None = None,
        postpaid: bool = False,
        external_id: str | Keep | None = KEEP,
        webhook_url: str | Keep | None = KEEP,
        low_balance_nanos: int | Keep | None = KEEP,
        monthly_budget_nanos: int | Keep | None = KEEP,
    ) -> dict[str, Any]:
        return account_view(
            await self.store.update_account(
                account_id,
                name=name,
                max_streams=max_streams,
                streaming_enabled=streaming_enabled,
                set_balance_nanos=set_balance_nanos,
                top_up_nanos=top_up_nanos,
                postpaid=postpaid,
                external_id=external_id,
                webhook_url=webhook_url,
                low_balance_nanos=low_balance_nanos,
                monthly_budget_nanos=monthly_budget_nanos,
            )
        )

    async def credit(self, account_id: str, amount_nanos: int, idempotency_key: str) -> tuple[dict[str, Any], bool]:
        """Credit a prepaid balance once per idempotency key: the credit document, and whether it was a repeat (which
        credited nothing and answers the first post's document)."""
        credit = await self.store.credit(account_id, amount_nanos, idempotency_key)
        return credit_view(credit), credit.replayed

    # -- keys -------------------------------------------------------------------------------------------------------

    async def create_key(self, account_id: str, options: KeyOptions | None = None) -> dict[str, Any]:
        return new_key_view(await self.store.create_key(account_id, options))

    async def list_keys(self, account_id: str) -> list[dict[str, Any]]:
        return [key_view(k) for k in await self.store.list_keys(account_id)]

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return key_view(await self.store.revoke_key(key_id))

    # -- sessions ---------------------------------------------------------------------------------------------------

    async def sessions_page(
        self,
        *,
        live: bool = False,
        account_id: str | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> dict[str, Any]:
        """One page of sessions of every gateway, newest first; ``live``: only those running now."""
        rows = await self.store.operator_sessions.list(live=live, account_id=account_id, after=cursor, limit=limit + 1)
        return page([session_view(s) for s in rows], limit)

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return session_view(await self.store.operator_sessions.get(session_id))

    async def close_session(self, session_id: str) -> dict[str, Any]:
        """Ask the gateway running the session to end it (1008 "closed by operator", within a second)."""
        return session_view(await self.store.operator_sessions.request_close(session_id))

    # -- admin tokens -----------------------------------------------------------------------------------------------

    async def create_admin_token(self, name: str) -> dict[str, Any]:
        return new_admin_token_view(await self.store.admin_tokens.create(name))

    async def list_admin_tokens(self) -> list[dict[str, Any]]:
        return [admin_token_view(t) for t in await self.store.admin_tokens.list()]

    async def revoke_admin_token(self, token_id: str) -> dict[str, Any]:
        return admin_token_view(await self.store.admin_tokens.revoke(token_id))
