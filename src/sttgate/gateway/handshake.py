"""The push handshake (SPEC §3): every refusal is an HTTP response before the upgrade; the 101 follows the provider's.

Split in two so provider-shaped routes (SPEC §3b) are one small function each:

- reading the request: :func:`credential_from_request` (``api_key`` query or ``Authorization``), :func:`principal_for`
  (key or token → account, 401/403), :func:`resolve_provider` (400);
- everything after: :func:`serve_stream` (all of the below, refusals answered), :func:`open_stream` (slot 429/402 →
  upstream connect 502/504/4xx → :class:`LiveSession`) and :func:`accept_and_relay` (the client's 101 with
  ``X-Session-Id``, then the relay).

A provider-shaped route is then::

    async def provider_route(request):
        query = split_query(raw_query(request))
        key, token = provider.sdk.credential(request.headers, query.token)
        return await serve_stream(request, provider_name=provider.name, key=key, token=token,
                                  forwarded=query.forwarded)

Use :func:`raw_query`, never ``request.rel_url.raw_query_string``: yarl normalizes the latter (``%2C`` → ``,``).
"""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from sttgate.core import closecodes, refusals
from sttgate.core.closing import decide
from sttgate.core.metering import FormatError
from sttgate.core.outcomes import ClosedBy, Outcome, SessionKind
from sttgate.core.params import redact_query, split_query
from sttgate.core.refusals import Refusal
from sttgate.gateway.keys import GATEWAY_ID, METRICS, SESSIONS, SETTINGS, STORE
from sttgate.gateway.live import LiveSession
from sttgate.gateway.logevents import log_event
from sttgate.gateway.relay import relay
from sttgate.gateway.upstream import AiohttpLink, close_timeout, connect_upstream
from sttgate.providers import Provider, get_provider, names, secret_prefixes
from sttgate.store import Principal, SlotOutcome
from sttgate.store.auth import looks_like_token

UPGRADE_REQUIRED = Refusal(426, "websocket_upgrade_required", "This endpoint only accepts WebSocket upgrades.")


class ClientSocket(web.WebSocketResponse):
    """The client hop; a frame above the limit closes it with 1009 "message too big" (aiohttp sends no reason)."""

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if code == closecodes.MESSAGE_TOO_BIG.code and not message:
            message = closecodes.MESSAGE_TOO_BIG.reason.encode()
        return await super().close(code=code, message=message, drain=drain)


def refuse(app: web.Application, refusal: Refusal) -> web.Response:
    """The HTTP answer to a refused handshake: the refusal's status and ``{"error": {"code", "message"}}``."""
    app[METRICS].refusals.labels(refusal.code).inc()
    return web.json_response(refusal.body(), status=refusal.status)


def raw_query(request: web.Request) -> str:
    """The query exactly as the client sent it. ``request.rel_url`` is normalized by yarl (``%2C`` becomes ``,``),
    so the request line's own bytes are used."""
    return request.raw_path.partition("?")[2]


def credential_from_request(request: web.Request, query_key: str | None) -> str | None:
    """The client's key: the ``api_key`` query value, else the ``Authorization`` header (raw or ``Bearer``)."""
    if query_key:
        return query_key
    header = request.headers.get("Authorization", "").strip()
    if header[:7].lower() == "bearer ":
        header = header[7:].strip()
    return header or None


async def principal_for(app: web.Application, key: str | None, token: str | None, provider: str) -> Principal:
    """Authenticate a key, or redeem a gateway token for ``provider``, and check the account may stream: 401, 403."""
    store = app[STORE]
    if token:
        principal = await store.redeem_token(token, provider)
        if principal is None:
            raise refusals.INVALID_TOKEN
    elif key:
        principal = await store.authenticate(key)
        if principal is None:
            raise refusals.INVALID_API_KEY
    else:
        raise refusals.MISSING_API_KEY
    if not principal.streaming_enabled:
        raise refusals.STREAMING_NOT_ENABLED
    return principal


async def authorize(
    app: web.Application, key: str | None, token: str | None, provider_name: str | None
) -> tuple[Principal, Provider]:
    """Credential then provider, in SPEC order (401, 403, 400); a token is single-use, so a request whose provider
    is missing or invalid is refused (400) before its token is spent."""
    if key and looks_like_token(key):
        key, token = None, key
    if token and not key:
        provider = resolve_provider(provider_name)
        return await principal_for(app, None, token, provider.name), provider
    principal = await principal_for(app, key, None, "")
    return principal, resolve_provider(provider_name)


def resolve_provider(name: str | None) -> Provider:
    """The provider named exactly ``name``: 400 ``missing_provider`` / ``invalid_provider`` otherwise."""
    if not name:
        raise refusals.missing_provider(names())
    provider = get_provider(name)
    if provider is None:
        raise refusals.invalid_provider(names())
    return provider


async def open_stream(
    app: web.Application,
    principal: Principal,
    provider: Provider,
    forwarded: str,
    *,
    kind: str = "websocket",
    session_id: str | None = None,
) -> LiveSession:
    """Take a stream slot (429/402) and connect the provider (502/504/4xx): a registered :class:`LiveSession`.

    Raises :class:`Refusal`. A slot taken for a session whose upstream could not be opened is released at once.
    """
    manager = app[SESSIONS]
    if manager.draining:
        raise refusals.SERVICE_DRAINING
    # The meter reads the declared format exactly as the provider will, or the session is refused (docs/billing.md).
    refused = provider.format_refusal(forwarded)
    if refused is not None:
        if refused.error is FormatError.UNSUPPORTED:
            raise refusals.unsupported_audio_format(refused.detail)
        raise refusals.invalid_audio_format(refused.detail)
    # Admission control (NOTES.md): an overloaded relay buffers instead of shedding load, so refuse clearly.
    budget = app[SETTINGS].max_sessions_per_process
    if budget and len(manager.live) + manager.opening >= budget:
        raise refusals.GATEWAY_OVERLOADED
    session_id = session_id or str(uuid.uuid4())
    manager.opening += 1
    try:
        upstream = await _take_slot_and_connect(app, principal, provider, forwarded, kind, session_id)
    finally:
        manager.opening -= 1
    live = LiveSession(
        manager,
        session_id=session_id,
        principal=principal,
        provider=provider,
        kind=kind,
        forwarded=forwarded,
        upstream=upstream,
    )
    manager.register(live)
    log_event(
        "session_start",
        session=session_id,
        account=principal.account_id,
        provider=provider.name,
        kind=kind,
        query=redact_query(forwarded, secret_prefixes()),
    )
    return live


async def _take_slot_and_connect(
    app: web.Application, principal: Principal, provider: Provider, forwarded: str, kind: str, session_id: str
) -> AiohttpLink:
    store = app[STORE]
    slot = await store.open_session(
        session_id=session_id,
        account_id=principal.account_id,
        kind=SessionKind(kind),
        provider=provider.name,
        gateway_id=app[GATEWAY_ID],
        min_balance_nanos=app[SESSIONS].price_nanos(provider.name),
        lease_ttl=app[SETTINGS].lease_ttl_seconds,
    )
    if slot is SlotOutcome.TOO_MANY_STREAMS:
        raise refusals.TOO_MANY_STREAMS
    if slot is SlotOutcome.INSUFFICIENT_BALANCE:
        raise refusals.INSUFFICIENT_BALANCE
    try:
        return await connect_upstream(app, provider, forwarded)
    except BaseException as exc:
        refusal = exc if isinstance(exc, Refusal) else None
        await asyncio.shield(
            store.end_session(
                session_id,
                audio_seconds=0.0,
                cycles=0,
                cost_nanos=0,
                close_code=None,
                close_reason=refusal.code if refusal else "handshake aborted",
                closed_by=ClosedBy.GATEWAY,
            )
        )
        raise


async def accept_and_relay(request: web.Request, live: LiveSession) -> web.StreamResponse:
    """Accept the client's upgrade (101 with ``X-Session-Id``), relay until both hops close, record the end."""
    settings = request.app[SETTINGS]
    client = ClientSocket(
        compress=False,
        autoclose=False,
        autoping=True,
        heartbeat=settings.heartbeat_seconds,
        max_msg_size=settings.max_frame_bytes + 1,
        decode_text=False,
        timeout=close_timeout(request.app),
    )
    client.headers["X-Session-Id"] = live.id
    try:
        try:
            await client.prepare(request)
        except ConnectionError:
            live.session.keep(decide(Outcome.CLIENT_LOST).record)  # gone before its 101: aiohttp ignores it
            raise
        await relay(AiohttpLink(client), live)
    finally:
        await asyncio.shield(live.end())
    return client


async def serve_stream(
    request: web.Request, *, provider_name: str | None, key: str | None, token: str | None, forwarded: str
) -> web.StreamResponse:
    """Everything after reading the request: refusals as HTTP responses, else the accepted and relayed session.

    Provider-shaped routes (SPEC §3b) read their credential their own way and call this.
    """
    app = request.app
    try:
        if app[SESSIONS].draining:
            raise refusals.SERVICE_DRAINING
        principal, provider = await authorize(app, key, token, provider_name)
        if not web.WebSocketResponse().can_prepare(request).ok:
            raise UPGRADE_REQUIRED
        live = await open_stream(app, principal, provider, forwarded)
    except Refusal as refusal:
        return refuse(app, refusal)
    return await accept_and_relay(request, live)


async def audio_stream(request: web.Request) -> web.StreamResponse:
    """``GET /ws/v2/audio-stream``: SPEC §3, refusals in the order of its table."""
    query = split_query(raw_query(request))
    return await serve_stream(
        request,
        provider_name=query.provider,
        key=credential_from_request(request, query.api_key),
        token=query.token,
        forwarded=query.forwarded,
    )
