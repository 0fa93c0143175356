"""What an API key may do (docs/contract.md#keys): its expiry, its own stream limit and its provider allow-list.

Pure: the store reads a key's fields, the shell passes the clock in. A key past its ``expires_at`` is refused like a
revoked one (401 ``invalid_api_key``), and so are the tokens it minted when they are redeemed; a key whose
``providers`` list excludes the session's provider is refused with 403 ``provider_not_allowed``; a key's
``max_streams`` holds within the account's (both are checked when a slot is taken).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

SEPARATOR = ","


def expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a key with this expiry is refused at ``now`` (an expiry is the first moment it is refused)."""
    return expires_at is not None and expires_at <= now


def stored_providers(providers: Iterable[str] | None) -> str | None:
    """An allow-list as stored (comma-separated, in the given order, without repeats); None: every provider."""
    if providers is None:
        return None
    return SEPARATOR.join(dict.fromkeys(providers))


def parse_providers(stored: str | None) -> tuple[str, ...] | None:
    """An allow-list as read back; None: every provider."""
    if stored is None:
        return None
    return tuple(p for p in stored.split(SEPARATOR) if p)


def allows(providers: tuple[str, ...] | None, provider: str) -> bool:
    """Whether a key with this allow-list may open a session with ``provider``."""
    return providers is None or provider in providers


def within_key_limit(key_live: int, key_max_streams: int | None) -> bool:
    """Whether a key with ``key_live`` open sessions/tasks may open one more (no limit of its own: yes)."""
    return key_max_streams is None or key_live < key_max_streams
