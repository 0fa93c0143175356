"""The operator's operations as documents: what the CLI prints and the web layer serves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sttgate.admin.documents import account_view, key_view, new_key_view, usage_document
from sttgate.store import Store
from sttgate.store.accounts import KeyOptions


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

    async def create_account(
        self,
        *,
        name: str,
        max_streams: int = 5,
        balance_nanos: int | None = None,
        streaming_enabled: bool = True,
    ) -> dict[str, Any]:
        return account_view(
            await self.store.create_account(
                name=name, max_streams=max_streams, balance_nanos=balance_nanos, streaming_enabled=streaming_enabled
            )
        )

    async def list_accounts(self) -> list[dict[str, Any]]:
        return [account_view(a) for a in await self.store.list_accounts()]

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
            )
        )

    async def create_key(self, account_id: str, options: KeyOptions | None = None) -> dict[str, Any]:
        return new_key_view(await self.store.create_key(account_id, options))

    async def list_keys(self, account_id: str) -> list[dict[str, Any]]:
        return [key_view(k) for k in await self.store.list_keys(account_id)]

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return key_view(await self.store.revoke_key(key_id))
