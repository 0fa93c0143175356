"""Routes for the providers' own SDKs and for browsers (SPEC §3b, §3c) and the live-transcription page.

- Provider-shaped WebSockets, one per registered provider with an SDK shape (``Provider.sdk``): only the
  credential's place differs from ``/ws/v2/audio-stream``: the provider is implied, and the rest (refusals,
  forwarding, relay, billing) is the gateway's own handshake and relay, called here.
- Token mints: ``POST /api/v2/audio-stream/token`` and each provider's own token routes (``SdkShape.token_mints``),
  each taking the account's key the way that SDK sends it.
- The page: ``GET /demo/`` and its static files, and ``POST /demo/token``, which mints a token with the operator's
  configured demo key so that the browser never holds a key.

Every refusal is the SPEC's JSON error body, also on the provider-shaped routes: a client of those routes is talking
to the gateway, and the gateway's codes are what its operator documents.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from sttgate.admin import isoformat
from sttgate.config import Settings
from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.core.params import split_query
from sttgate.core.refusals import (
    INVALID_API_KEY,
    MISSING_API_KEY,
    STREAMING_NOT_ENABLED,
    Refusal,
    invalid_provider,
)
from sttgate.gateway.handshake import raw_query, serve_stream
from sttgate.gateway.keys import SETTINGS, STORE
from sttgate.providers import PROVIDERS, Provider, get_provider, names
from sttgate.providers.base import MintRequest, TokenMint, bearer_or_raw
from sttgate.store import Principal
from sttgate.store.auth import MAX_SECONDS, MIN_SECONDS

# A token asked for without a lifetime lives this long: enough to open a socket, short enough to be harmless.
DEFAULT_TOKEN_SECONDS = 60
DEMO_TOKEN_SECONDS = 60
DEMO_FILES = {"demo.js", "demo.css", "pcm-worklet.js"}
# The page talks to its own origin only.
DEMO_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"
DEMO_NOT_CONFIGURED = Refusal(
    503, "demo_not_configured", "The demo page has no valid demo API key (STTGATE_DEMO_API_KEY)."
)


def invalid_request(message: str) -> Refusal:
    return Refusal(400, "invalid_request", message)


def setup(app: web.Application) -> None:
    """Register each registered provider's drop-in routes, the token mints and, when ``settings.demo_page``, the page.

    Call on an app from :func:`sttgate.gateway.app.create_app` before it starts (its settings decide the page; the
    provider registry as it is now decides the provider routes).
    """
    for provider in PROVIDERS.values():
        if provider.sdk is None:
            continue
        app.router.add_get(provider.sdk.stream_path, _provider_stream(provider))
        for mint in provider.sdk.token_mints:
            app.router.add_route(mint.method, mint.path, _provider_mint(provider, mint))
    app.router.add_post("/api/v2/audio-stream/token", mint_token)
    if app[SETTINGS].demo_page:
        app.router.add_get("/demo", demo_redirect)
        app.router.add_get("/demo/", demo_page)
        app.router.add_get("/demo/static/{name}", demo_static)
        app.router.add_post("/demo/token", demo_token)


def _provider_stream(provider: Provider) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The push handshake with ``provider`` implied and the credential where that provider's SDK puts it.

    A ``provider``/``api_key``/``token`` query pair is consumed like on ``/ws/v2/audio-stream`` and never forwarded.
    """
    assert provider.sdk is not None
    credential = provider.sdk.credential

    async def provider_stream(request: web.Request) -> web.StreamResponse:
        query = split_query(raw_query(request))
        key, token = credential(request.headers, query.token)
        return await serve_stream(request, provider_name=provider.name, key=key, token=token, forwarded=query.forwarded)

    return provider_stream


def refusal_response(refusal: Refusal) -> web.Response:
    return web.json_response(refusal.body(), status=refusal.status, headers={"Cache-Control": "no-store"})


def _token_response(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def _authenticate(request: web.Request, credential: str | None) -> Principal:
    """The account behind the key; tokens cannot mint tokens. Refusals in SPEC §3 order."""
    if credential is None:
        raise MISSING_API_KEY
    principal = await request.app[STORE].authenticate(credential)
    if principal is None:
        raise INVALID_API_KEY
    if not principal.streaming_enabled:
        raise STREAMING_NOT_ENABLED
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


def _provider(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or get_provider(value) is None:
        raise invalid_provider(names())
    return value


async def _json_object(request: web.Request) -> dict[str, Any]:
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


def _refusals(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Turn a raised :class:`Refusal` into the SPEC's JSON error response."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            return refusal_response(refusal)

    return wrapped


@_refusals
async def mint_token(request: web.Request) -> web.Response:
    """``POST /api/v2/audio-stream/token``: the gateway's own token mint (key in ``Authorization``)."""
    settings = request.app[SETTINGS]
    principal = await _authenticate(request, bearer_or_raw(request.headers.get("Authorization")))
    body = await _json_object(request)
    seconds = _lifetime(body.get("expires_in_seconds", DEFAULT_TOKEN_SECONDS), settings)
    provider = _provider(body.get("provider"))
    cap = _session_cap(body.get("max_session_seconds"), settings)
    minted = await request.app[STORE].mint_token(principal.account_id, seconds, provider, max_session_seconds=cap)
    return _token_response(
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

    @_refusals
    async def provider_mint(request: web.Request) -> web.Response:
        settings, store = request.app[SETTINGS], request.app[STORE]
        principal = await _authenticate(request, mint.key(request.headers))
        asked = MintRequest(
            path_params=request.match_info,
            query=request.query,
            lifetime=lambda value: _lifetime(value, settings),
            max_seconds=min(settings.token_max_seconds, MAX_SECONDS),
        )
        seconds = mint.seconds(asked)
        cap = mint.session_cap(asked)
        minted = await store.mint_token(principal.account_id, seconds, provider.name, max_session_seconds=cap)
        return _token_response(mint.body(minted.token, seconds))

    return provider_mint


def _web_file(name: str) -> bytes:
    return (resources.files("sttgate") / "web" / name).read_bytes()


async def demo_redirect(request: web.Request) -> web.Response:
    """``/demo`` → ``/demo/``, relative so that a reverse proxy's path prefix survives (the page uses relative URLs)."""
    raise web.HTTPPermanentRedirect("demo/")


def _provider_options() -> str:
    """The page's provider ``<option>`` list, from the registry: each names its route and its page adapter."""
    options = []
    for provider in PROVIDERS.values():
        page = provider.page_info()
        if page is not None:
            options.append(
                f'<option value="{html.escape(page["name"])}" data-path="{html.escape(page["path"])}"'
                f' data-script="{html.escape(page["script"])}">{html.escape(page["label"])}</option>'
            )
    return "\n          ".join(options)


async def demo_page(request: web.Request) -> web.Response:
    page = _web_file("index.html").decode("utf-8").replace("<!-- providers -->", _provider_options())
    return web.Response(
        body=page.encode("utf-8"),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"},
    )


def _page_script(name: str) -> bytes | None:
    """A provider's page adapter, served as ``provider-<name>.js``."""
    for provider in PROVIDERS.values():
        page = provider.page_info()
        if page is not None and page["script"] == name and provider.page_script is not None:
            return (resources.files("sttgate.providers") / "page" / provider.page_script).read_bytes()
    return None


async def demo_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = _web_file(name) if name in DEMO_FILES else _page_script(name)
    if body is None:
        raise web.HTTPNotFound()
    content_type = "text/css" if name.endswith(".css") else "text/javascript"
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"})


@_refusals
async def demo_token(request: web.Request) -> web.Response:
    """The page's backend: a token bound to the chosen provider, minted with the server's demo key.

    Also reports the price of a 5-second cycle so the page can show the session's running cost exactly as billed.
    """
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await _json_object(request)
    provider_name = _provider(body.get("provider"))
    provider = get_provider(provider_name or "")
    if provider is None:
        raise invalid_provider(names())
    demo_key = settings.demo_api_key.get_secret_value()
    principal = await store.authenticate(demo_key) if demo_key else None
    if principal is None:
        raise DEMO_NOT_CONFIGURED
    if not principal.streaming_enabled:
        raise STREAMING_NOT_ENABLED
    minted = await store.mint_token(principal.account_id, DEMO_TOKEN_SECONDS, provider.name)
    rate = settings.provider(provider.name).rate
    return _token_response(
        {
            "token": minted.token,
            "expires_at": isoformat(minted.expires_at),
            "provider": provider.name,
            "rate_usd_per_hour": str(rate),
            "cycle_price_usd": format_usd(cycle_price_nanos(rate)),
        }
    )
