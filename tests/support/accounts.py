"""An account with one key, made directly in a store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sttgate.store import Store


@dataclass
class Account:
    id: str
    key: str


async def create_account(store: Store, *, name: str = "test", **fields: Any) -> Account:
    """``Store.create_account(name=..., **fields)`` (max_streams, balance_nanos, streaming_enabled) plus a key."""
    created = await store.create_account(name=name, **fields)
    key = await store.create_key(created.id)
    return Account(created.id, key.key)
