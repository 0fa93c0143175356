"""Account events (docs/contract.md#account-events), sans I/O: what occurred, its stable id, and the body posted.

Each occurrence has one id, built from what identifies it, so that however many gateways observe it, and however
often its delivery is retried, the receiver sees one id (the ``webhook-id`` of the Standard Webhooks headers):

- ``balance.low:<account>:<n>``: the *n*-th balance event of the account (a prepaid balance fell below
  ``low_balance_usd``: the charge that crossed it numbers it);
- ``balance.exhausted:<account>:<n>``: the balance could not pay a cycle (a session cut off with 4002, or a handshake
  refused with 402), once until a cycle is paid again;
- ``budget.threshold:<account>:<yyyy-mm>:<percent>``: this month's cost passed 50, 80 or 100 % of the budget;
- ``key.expiring:<key>:<expires_at>``: a key expires within 7 days.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

# A key this close to its expiry is announced (``key.expiring``).
KEY_EXPIRING_WITHIN = timedelta(days=7)


class EventType(StrEnum):
    BALANCE_LOW = "balance.low"
    BALANCE_EXHAUSTED = "balance.exhausted"
    BUDGET_THRESHOLD = "budget.threshold"
    KEY_EXPIRING = "key.expiring"


def balance_event_id(kind: EventType, account_id: str, seq: int) -> str:
    return f"{kind}:{account_id}:{seq}"


def budget_threshold_id(account_id: str, month: str, percent: int) -> str:
    return f"{EventType.BUDGET_THRESHOLD}:{account_id}:{month}:{percent}"


def key_expiring_id(key_id: str, expires_at: datetime) -> str:
    return f"{EventType.KEY_EXPIRING}:{key_id}:{expires_at.isoformat()}"


def crossed_low(low_nanos: int | None, before_nanos: int, after_nanos: int) -> bool:
    """Whether a debit from ``before_nanos`` to ``after_nanos`` took the balance below ``low_nanos`` (from at or above
    it): once per crossing, however many cycles then stay below."""
    return low_nanos is not None and after_nanos < low_nanos <= before_nanos


def body(event_id: str, kind: EventType, at: datetime, data: dict[str, Any]) -> str:
    """The JSON posted for an event, in the Standard Webhooks shape (``type``, ``timestamp``, ``data``) plus its
    ``id``; stored as written, so every retry posts the same bytes."""
    return json.dumps(
        {"id": event_id, "type": str(kind), "timestamp": at.isoformat(), "data": data}, separators=(",", ":")
    )
