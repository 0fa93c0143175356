"""``GET /api/v2/usage``: the usage document (docs/contract.md#usage) for the account whose key authenticates."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from sttgate.admin import usage_document
from sttgate.core import refusals
from sttgate.providers import names
from sttgate.web.credentials import credential_from_request
from sttgate.web.services import SERVICES


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v2/usage", usage)


async def usage(request: web.Request) -> web.Response:
    """``GET /api/v2/usage[?since=…&until=…]``; an account that may not stream still sees its usage: only the key
    matters here."""
    store = request.app[SERVICES].store
    key = credential_from_request(request, request.query.get("api_key"))
    if not key:
        raise refusals.missing_api_key()
    principal = await store.authenticate(key)
    if principal is None:
        raise refusals.invalid_api_key()
    try:
        since, until = (_timestamp(request.query.get(name)) for name in ("since", "until"))
    except ValueError as exc:
        raise refusals.invalid_request(str(exc)) from None
    document = await store.usage(principal.account_id, since, until)
    return web.json_response(usage_document(document, names()))


def _timestamp(value: str | None) -> datetime | None:
    """An ISO 8601 date or time; without an offset it is UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"Not an ISO 8601 date or time: {value!r}.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
