"""The wire documents built from store rows: money as USD strings, times as ISO 8601 UTC with a ``Z``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sttgate.core.money import CYCLE_SECONDS, format_usd
from sttgate.store import (
    Account,
    AdminToken,
    ApiKey,
    Credit,
    NewAdminToken,
    NewKey,
    OperatorSession,
    Usage,
    UsageRow,
)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, the form every document of the gateway uses."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds(value: float) -> float:
    """Audio seconds for documents: float sums carry noise below the millisecond, which nobody bills."""
    return round(float(value), 3)


def _optional_seconds(value: float | None) -> float | None:
    return None if value is None else _seconds(value)


def _session_seconds(row: UsageRow) -> float | None:
    """From the provider's 101 (``started_at``) to the close; None while the session is live. Never negative: the
    end of a session reaped by another gateway is that gateway's clock."""
    if row.ended_at is None:
        return None
    return _seconds(max(0.0, (row.ended_at - row.started_at).total_seconds()))


def usage_document(usage: Usage, providers: Sequence[str]) -> dict[str, Any]:
    """The usage document (docs/contract.md#usage): totals for every provider in ``providers`` (zeros included)
    and any other provider that has sessions, then the sessions newest first."""
    totals: dict[str, dict[str, Any]] = {
        p: {"sessions": 0, "audio_seconds": 0.0, "cycles": 0, "cost_nanos": 0} for p in providers
    }
    for r in usage.sessions:
        t = totals.setdefault(r.provider, {"sessions": 0, "audio_seconds": 0.0, "cycles": 0, "cost_nanos": 0})
        t["sessions"] += 1
        t["audio_seconds"] += r.audio_seconds
        t["cycles"] += r.cycles
        t["cost_nanos"] += r.cost_nanos
    return {
        "account_id": usage.account_id,
        "balance_usd": format_usd(usage.balance_nanos),
        "totals": {
            provider: {
                "sessions": t["sessions"],
                "audio_seconds": _seconds(t["audio_seconds"]),
                "billed_seconds": t["cycles"] * CYCLE_SECONDS,
                "cost_usd": format_usd(t["cost_nanos"]),
            }
            for provider, t in totals.items()
        },
        "sessions": [session_entry(r) for r in usage.sessions],
    }


def session_entry(r: UsageRow) -> dict[str, Any]:
    """One session of the usage document (docs/contract.md#usage)."""
    return {
        "id": r.id,
        "kind": r.kind.value,
        "provider": r.provider,
        "api_key_id": r.api_key_id,
        "started_at": isoformat(r.started_at),
        "ended_at": isoformat(r.ended_at),
        "audio_seconds": _seconds(r.audio_seconds),
        "billed_seconds": r.cycles * CYCLE_SECONDS,
        "cost_usd": format_usd(r.cost_nanos),
        "close_code": r.close_code,
        "closed_by": None if r.closed_by is None else r.closed_by.value,
        "model": r.model,
        "rate_usd_per_hour": r.rate_usd_per_hour,
        "basis": r.basis,
        "provider_audio_seconds": _optional_seconds(r.provider_audio_seconds),
        "provider_session_seconds": _optional_seconds(r.provider_session_seconds),
        "session_seconds": _session_seconds(r),
    }


def session_view(s: OperatorSession) -> dict[str, Any]:
    """A session as the admin API lists it (docs/admin-api.md#sessions): the usage document's entry, plus its
    account, the gateway running it, whether it is live, and when an operator asked for it to close."""
    return {
        **session_entry(s.row),
        "account_id": s.account_id,
        "gateway_id": s.gateway_id,
        "live": s.live,
        "close_requested_at": isoformat(s.close_requested_at),
    }


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "streaming_enabled": account.streaming_enabled,
        "max_streams": account.max_streams,
        "balance_usd": format_usd(account.balance_nanos),
        "external_id": account.external_id,
        "webhook_url": account.webhook_url,
        "low_balance_usd": format_usd(account.low_balance_nanos),
        "monthly_budget_usd": format_usd(account.monthly_budget_nanos),
        "created_at": isoformat(account.created_at),
        "updated_at": isoformat(account.updated_at),
    }


def key_view(key: ApiKey) -> dict[str, Any]:
    """A listed key: never its secret."""
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "expires_at": isoformat(key.expires_at),
        "max_streams": key.max_streams,
        "providers": None if key.providers is None else list(key.providers),
        "created_at": isoformat(key.created_at),
        "last_used_at": isoformat(key.last_used_at),
        "revoked_at": isoformat(key.revoked_at),
    }


def new_key_view(key: NewKey) -> dict[str, Any]:
    """A key just created, with its secret (shown once)."""
    return {
        "id": key.id,
        "key": key.key,
        "prefix": key.prefix,
        "account_id": key.account_id,
        "name": key.name,
        "expires_at": isoformat(key.expires_at),
        "max_streams": key.max_streams,
        "providers": None if key.providers is None else list(key.providers),
        "created_at": isoformat(key.created_at),
    }


def credit_view(credit: Credit) -> dict[str, Any]:
    """A credit (docs/admin-api.md#credits): the same document for the first post and every repeat of its key;
    ``balance_usd`` is the balance right after this credit."""
    return {
        "id": credit.id,
        "account_id": credit.account_id,
        "idempotency_key": credit.idempotency_key,
        "amount_usd": format_usd(credit.amount_nanos),
        "balance_usd": format_usd(credit.balance_nanos),
        "created_at": isoformat(credit.created_at),
    }


def admin_token_view(token: AdminToken) -> dict[str, Any]:
    """A listed admin token: never its secret."""
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": isoformat(token.created_at),
        "last_used_at": isoformat(token.last_used_at),
        "revoked_at": isoformat(token.revoked_at),
    }


def new_admin_token_view(token: NewAdminToken) -> dict[str, Any]:
    """An admin token just created, with its secret (shown once)."""
    return {
        "id": token.id,
        "name": token.name,
        "token": token.token,
        "prefix": token.prefix,
        "created_at": isoformat(token.created_at),
    }


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A page of a list (docs/admin-api.md#paging) from up to ``limit + 1`` items: the first ``limit``, and the
    cursor for the next page (the last item's id) when there was one more."""
    more = len(items) > limit
    data = items[:limit]
    return {"data": data, "next_cursor": data[-1]["id"] if more and data else None}
