"""Routes for the providers' own SDKs and for browsers (SPEC §3b, §3c) and the live-transcription page.

- Provider-shaped WebSockets: ``/elevenlabs/v1/speech-to-text/realtime`` (``xi-api-key`` or ``?token=``) and
  ``/assemblyai/v3/ws`` (``Authorization``, raw or Bearer, holding a key or a token, or ``?token=``). Only the
  credential's place differs from ``/ws/v2/audio-stream``: the provider is implied, and the rest (refusals,
  forwarding, relay, billing) is the gateway's own handshake and relay, called here.
- Token mints: ``POST /api/v2/audio-stream/token`` and the provider-shaped ``POST
  /elevenlabs/v1/single-use-token/realtime_scribe`` and ``GET /assemblyai/v3/token``, each taking the account's
  key the way that SDK sends it.
- The page: ``GET /demo/`` and its static files, and ``POST /demo/token``, which mints a token with the operator's
  configured demo key so that the browser never holds a key.

Every refusal is the SPEC's JSON error body, also on the provider-shaped routes: a client of those routes is talking
to the gateway, and the gateway's codes are what its operator documents.
"""

from __future__ import annotations

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
    INVALID_PROVIDER,
    MISSING_API_KEY,
    SERVICE_DRAINING,
    STREAMING_NOT_ENABLED,
    VALID_PROVIDERS,
    Refusal,
)
from sttgate.gateway.handshake import accept_and_relay, authorize, open_stream, raw_query, refuse
from sttgate.gateway.keys import SESSIONS, SETTINGS, STORE
from sttgate.providers import get_provider
from sttgate.store import Principal
from sttgate.store.auth import MAX_SECONDS, MIN_SECONDS

# A token asked for without a lifetime lives this long: enough to open a socket, short enough to be harmless.
DEFAULT_TOKEN_SECONDS = 60
# ElevenLabs documents 15 minutes for its single-use tokens; ours are capped by `token_max_seconds`.
ELEVENLABS_TOKEN_SECONDS = 15 * 60
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
    """Register the provider-shaped WebSockets, the token mints and, when ``settings.demo_page``, the page.

    Call on an app from :func:`sttgate.gateway.app.create_app` before it starts (its settings decide the page).
    """
    app.router.add_get("/elevenlabs/v1/speech-to-text/realtime", elevenlabs_realtime)
    app.router.add_get("/assemblyai/v3/ws", assemblyai_realtime)
    app.router.add_post("/api/v2/audio-stream/token", mint_token)
    app.router.add_post("/elevenlabs/v1/single-use-token/{token_type}", mint_elevenlabs_token)
    app.router.add_get("/assemblyai/v3/token", mint_assemblyai_token)
    if app[SETTINGS].demo_page:
        app.router.add_get("/demo", demo_redirect)
        app.router.add_get("/demo/", demo_page)
        app.router.add_get("/demo/static/{name}", demo_static)
        app.router.add_post("/demo/token", demo_token)


async def _provider_stream(
    request: web.Request, provider_name: str, credential: Callable[[str | None], tuple[str | None, str | None]]
) -> web.StreamResponse:
    """The push handshake with the provider implied and the credential where that provider's SDK puts it.

    ``credential(query_token)`` returns ``(key, token)``. A ``provider``/``api_key``/``token`` query pair is
    consumed like on ``/ws/v2/audio-stream`` and never forwarded.
    """
    app = request.app
    query = split_query(raw_query(request))
    try:
        if app[SESSIONS].draining:
            raise SERVICE_DRAINING
        key, token = credential(query.token)
        principal, provider = await authorize(app, key, token, provider_name)
        if not web.WebSocketResponse().can_prepare(request).ok:
            raise Refusal(426, "websocket_upgrade_required", "This endpoint only accepts WebSocket upgrades.")
        live = await open_stream(app, principal, provider, query.forwarded)
    except Refusal as refusal:
        return refuse(app, refusal)
    return await accept_and_relay(request, live)


async def elevenlabs_realtime(request: web.Request) -> web.StreamResponse:
    """ElevenLabs' realtime path: ``?token=`` (the SDK then sends no header) or the ``xi-api-key`` header."""

    def credential(query_token: str | None) -> tuple[str | None, str | None]:
        if query_token:  # ElevenLabs: a token takes precedence over a header
            return None, query_token
        return request.headers.get("xi-api-key", "").strip() or None, None

    return await _provider_stream(request, "elevenlabs", credential)


async def assemblyai_realtime(request: web.Request) -> web.StreamResponse:
    """AssemblyAI's v3 path: ``Authorization`` (raw or Bearer; the SDK sends a temporary token there too) or
    ``?token=``."""

    def credential(query_token: str | None) -> tuple[str | None, str | None]:
        header = bearer_or_raw(request.headers.get("Authorization"))
        return (header, None) if header else (None, query_token)

    return await _provider_stream(request, "assemblyai", credential)


def refusal_response(refusal: Refusal) -> web.Response:
    return web.json_response(refusal.body(), status=refusal.status, headers={"Cache-Control": "no-store"})


def _token_response(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def bearer_or_raw(value: str | None) -> str | None:
    """The credential in an ``Authorization`` value: ``Bearer <x>`` or the raw ``<x>`` (as AssemblyAI's SDK sends)."""
    if value is None:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


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


def _provider(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in VALID_PROVIDERS:
        raise INVALID_PROVIDER
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
    minted = await request.app[STORE].mint_token(principal.account_id, seconds, provider)
    return _token_response(
        {
            "token": minted.token,
            "expires_at": isoformat(minted.expires_at),
            "expires_in_seconds": seconds,
            "provider": provider,
        }
    )


@_refusals
async def mint_elevenlabs_token(request: web.Request) -> web.Response:
    """ElevenLabs' ``POST /v1/single-use-token/realtime_scribe`` shape (key in ``xi-api-key``): ``{"token"}``."""
    settings, store = request.app[SETTINGS], request.app[STORE]
    principal = await _authenticate(request, request.headers.get("xi-api-key", "").strip() or None)
    if request.match_info["token_type"] != "realtime_scribe":
        raise Refusal(422, "invalid_token_type", "Only realtime_scribe tokens are served by this gateway.")
    seconds = min(ELEVENLABS_TOKEN_SECONDS, settings.token_max_seconds, MAX_SECONDS)
    minted = await store.mint_token(principal.account_id, seconds, "elevenlabs")
    return _token_response({"token": minted.token})


@_refusals
async def mint_assemblyai_token(request: web.Request) -> web.Response:
    """AssemblyAI's ``GET /v3/token?expires_in_seconds=N`` shape (key in ``Authorization``).

    ``max_session_duration_seconds`` is accepted and ignored: gateway sessions are limited by balance, not time.
    """
    settings, store = request.app[SETTINGS], request.app[STORE]
    principal = await _authenticate(request, bearer_or_raw(request.headers.get("Authorization")))
    if "expires_in_seconds" not in request.query:
        raise invalid_request("expires_in_seconds is required.")
    seconds = _lifetime(request.query["expires_in_seconds"], settings)
    minted = await store.mint_token(principal.account_id, seconds, "assemblyai")
    return _token_response({"token": minted.token, "expires_in_seconds": seconds})


def _web_file(name: str) -> bytes:
    return (resources.files("sttgate") / "web" / name).read_bytes()


async def demo_redirect(request: web.Request) -> web.Response:
    """``/demo`` → ``/demo/``, relative so that a reverse proxy's path prefix survives (the page uses relative URLs)."""
    raise web.HTTPPermanentRedirect("demo/")


async def demo_page(request: web.Request) -> web.Response:
    return web.Response(
        body=_web_file("index.html"),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"},
    )


async def demo_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in DEMO_FILES:
        raise web.HTTPNotFound()
    content_type = "text/css" if name.endswith(".css") else "text/javascript"
    return web.Response(
        body=_web_file(name), content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"}
    )


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
        raise INVALID_PROVIDER
    demo_key = settings.demo_api_key.get_secret_value()
    principal = await store.authenticate(demo_key) if demo_key else None
    if principal is None:
        raise DEMO_NOT_CONFIGURED
    if not principal.streaming_enabled:
        raise STREAMING_NOT_ENABLED
    minted = await store.mint_token(principal.account_id, DEMO_TOKEN_SECONDS, provider.name)
    rate = provider.rate(settings)
    return _token_response(
        {
            "token": minted.token,
            "expires_at": isoformat(minted.expires_at),
            "provider": provider.name,
            "rate_usd_per_hour": str(rate),
            "cycle_price_usd": format_usd(cycle_price_nanos(rate)),
        }
    )
