"""Persistence: accounts, keys, stream slots, the ledger and pull tasks (SQLite or PostgreSQL)."""

from sttgate.store.store import NotFoundError, Principal, SessionProgress, Store

__all__ = ["NotFoundError", "Principal", "SessionProgress", "Store"]
