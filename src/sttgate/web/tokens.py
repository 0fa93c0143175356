"""Token mints (docs/contract.md#tokens): ``POST /api/v2/audio-stream/token`` and each provider's own token routes
(``SdkShape.token_mints``), each taking the account's key the way that SDK sends it.

Refusals are raised and rendered by :mod:`sttgate.web.errors`; answers carry ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sttgate.admin import isoformat
from sttgate.config import Settings
from sttgate.core.refusals import (
    invalid_api_key,
    invalid_provider,
    invalid_request,
    missing_api_key,
    provider_not_allowed,
    streaming_not_enabled,
)
from sttgate.providers import PROVIDERS, Provider, get_provider, names
from sttgate.providers.base import MintRequest, TokenMint, bearer_or_raw
from sttgate.store import Principal, Store
from sttgate.store.auth import MAX_SECONDS, MIN_SECONDS
from sttgate.web.services import SERVICES

# A token asked for without a lifetime lives this long: enough to open a socket, short enough to be harmless.
DEFAULT_TOKEN_SECONDS = 60


def setup(app: web.Application) -> None:
    """Register the gateway's token mint and each registered provider's token mints (the registry as it is now)."""
    for provider in PROVIDERS.values():
        if provider.sdk is not None:
            for mint in provider.sdk.token_mints:
                app.router.add_route(mint.method, mint.path, _provider_mint(provider, mint))
    app.router.add_post("/api/v2/audio-stream/token", mint_token)


def token_response(body: dict[str, Any]) -> web.Response:
    """A minted token's answer: never cached."""
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _authenticate(store: Store, credential: str | None) -> Principal:
    """The account behind the key; tokens cannot mint tokens. Refusals in the order of
    docs/contract.md#refusals-on-other-routes."""
    if credential is None:
        raise missing_api_key()
    principal = await store.authenticate(credential)
    if principal is None:
        raise invalid_api_key()
    if not principal.streaming_enabled:
        raise streaming_not_enabled()
    return principal


def _lifetime(value: Any, settings: Settings) -> int:
    """A token lifetime in whole seconds, 1..token_max_seconds (at most 600)."""
    limit = min(settings.token_max_seconds, MAX_SECONDS)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_SECONDS <= value <= limit:
        raise invalid_request(f"expires_in_seconds must be an integer from {MIN_SECONDS} to {limit}.")
    return value


def _session_cap(value: Any, settings: Settings) -> int | None:
    """A token's ``max_session_seconds``: whole seconds, 1..the gateway's session limit (docs/contract.md#tokens)."""
    if value is None:
        return None
    limit = int(settings.max_session_seconds)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise invalid_request(f"max_session_seconds must be an integer from 1 to {limit}.")
    return value


def provider_argument(value: Any) -> str | None:
    """A body's optional ``provider``: a registered provider's name, else 400 ``invalid_provider``."""
    if value is None:
        return None
    if not isinstance(value, str) or get_provider(value) is None:
        raise invalid_provider(names())
    return value


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid_request("The body must be a JSON object.") from exc
    if not isinstance(body, dict):
        raise invalid_request("The body must be a JSON object.")
    return body


def _check_allowed(principal: Principal, provider: str) -> None:
    """A token for a provider the key may not open is refused at once (403 ``provider_not_allowed``), rather than
    minted to be refused at the handshake (docs/contract.md#keys)."""
    if not principal.allows(provider):
        raise provider_not_allowed(provider, principal.key_providers or ())


async def mint_token(request: web.Request) -> web.Response:
    """``POST /api/v2/audio-stream/token``: the gateway's own token mint (key in ``Authorization``)."""
    svc = request.app[SERVICES]
    principal = await _authenticate(svc.store, bearer_or_raw(request.headers.get("Authorization")))
    body = await json_object(request)
    seconds = _lifetime(body.get("expires_in_seconds", DEFAULT_TOKEN_SECONDS), svc.settings)
    provider = provider_argument(body.get("provider"))
    if provider is not None:
        _check_allowed(principal, provider)
    cap = _session_cap(body.get("max_session_seconds"), svc.settings)
    minted = await svc.store.mint_token(
        principal.account_id, seconds, provider, max_session_seconds=cap, key_id=principal.key_id
    )
    return token_response(
        {
            "token": minted.token,
            "expires_at": isoformat(minted.expires_at),
            "expires_in_seconds": seconds,
            "provider": provider,
            "max_session_seconds": cap,
        }
    )


def _provider_mint(provider: Provider, mint: TokenMint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A provider-shaped token mint: the key where that SDK sends it, the lifetime and answer in its shape."""

    async def provider_mint(request: web.Request) -> web.Response:
        svc = request.app[SERVICES]
        settings = svc.settings
        principal = await _authenticate(svc.store, mint.key(request.headers))
        _check_allowed(principal, provider.name)
        asked = MintRequest(
            path_params=request.match_info,
            query=request.query,
            body=await json_object(request) if mint.reads_body else {},
            lifetime=lambda value: _lifetime(value, settings),
            max_seconds=min(settings.token_max_seconds, MAX_SECONDS),
        )
        seconds = mint.seconds(asked)
        cap = mint.session_cap(asked)
        minted = await svc.store.mint_token(
            principal.account_id, seconds, provider.name, max_session_seconds=cap, key_id=principal.key_id
        )
        return token_response(mint.body(minted.token, seconds))

    return provider_mint
