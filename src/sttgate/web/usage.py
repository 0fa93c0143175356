"""``GET /api/v2/usage``: the usage document (docs/contract.md#usage) for the account whose key authenticates."""

from __future__ import annotations

from aiohttp import web

from sttgate.admin import usage_document
from sttgate.admin.window import InvalidWindow, window
from sttgate.core import refusals
from sttgate.providers import names
from sttgate.web.credentials import credential_from_request
from sttgate.web.services import SERVICES


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v2/usage", usage)


async def usage(request: web.Request) -> web.Response:
    """``GET /api/v2/usage[?since=…&until=…&key_id=…]``, the window read as the CLI reads it
    (:mod:`sttgate.admin.window`); an account that may not stream still sees its usage: only the key matters here."""
    store = request.app[SERVICES].store
    key = credential_from_request(request, request.query.get("api_key"))
    if not key:
        raise refusals.missing_api_key()
    principal = await store.authenticate(key)
    if principal is None:
        raise refusals.invalid_api_key()
    try:
        # An empty parameter (``?since=``) is an absent one; anything else is read as the CLI reads it.
        since, until = window(request.query.get("since") or None, request.query.get("until") or None)
    except InvalidWindow as exc:
        raise refusals.invalid_request(str(exc)) from None
    # ``key_id``: only that key's sessions; always within the caller's account (another account's key: none).
    document = await store.usage(principal.account_id, since, until, request.query.get("key_id") or None)
    return web.json_response(usage_document(document, names()))
