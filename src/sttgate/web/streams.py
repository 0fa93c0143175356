"""The push WebSocket routes (docs/contract.md#push-websocket, #drop-in-sdk-routes): every refusal is an HTTP
response before the upgrade; the 101 follows the provider's.

``/ws/v2/audio-stream`` and one drop-in route per registered provider with an SDK shape (``Provider.sdk``) differ
only in where the credential is read: the provider-shaped route implies its provider and reads the credential where
that SDK puts it. Both then call :func:`serve_stream`: authorize and open the stream
(:mod:`sttgate.gateway.opening`, which raises refusals for :mod:`sttgate.web.errors` to render), then
:func:`accept_and_relay` (the client's 101 with ``X-Session-Id``, then the relay).

Use :func:`~sttgate.web.credentials.raw_query`, never ``request.rel_url.raw_query_string``: yarl normalizes the
latter (``%2C`` → ``,``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from sttgate.core import closecodes, refusals
from sttgate.core.closing import decide
from sttgate.core.outcomes import Outcome
from sttgate.core.params import split_query
from sttgate.gateway.live import LiveSession
from sttgate.gateway.logevents import log_event
from sttgate.gateway.opening import authorize, database_guard
from sttgate.gateway.relay import relay
from sttgate.gateway.tracing import handshake
from sttgate.gateway.tracing import span as tracing_span
from sttgate.gateway.upstream import AiohttpLink
from sttgate.providers import PROVIDERS, Provider
from sttgate.web.credentials import credential_from_request, raw_query
from sttgate.web.logfilter import CLIENT_GONE, count_bad_request
from sttgate.web.services import SERVICES


class ClientSocket(web.WebSocketResponse):
    """The client hop; a frame above the limit closes it with 1009 "message too big" (aiohttp sends no reason)."""

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if code == closecodes.MESSAGE_TOO_BIG.code and not message:
            message = closecodes.MESSAGE_TOO_BIG.reason.encode()
        return await super().close(code=code, message=message, drain=drain)


def setup(app: web.Application) -> None:
    """Register ``/ws/v2/audio-stream`` and each registered provider's drop-in route (the registry as it is now).

    Only GET upgrades: HEAD (which aiohttp would route to a GET handler) and every other method are answered 405
    ``method_not_allowed`` before anything else (docs/contract.md#refusals).
    """
    paths: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {"/ws/v2/audio-stream": audio_stream}
    for provider in PROVIDERS.values():
        if provider.sdk is not None:
            paths[provider.sdk.stream_path] = _provider_stream(provider)
    for path, handler in paths.items():
        app.router.add_get(path, handler, allow_head=False)
        app.router.add_route("*", path, _not_get)


async def _not_get(request: web.Request) -> web.StreamResponse:
    raise refusals.method_not_allowed()


async def accept_and_relay(
    request: web.Request, live: LiveSession, protocols: tuple[str, ...] = ()
) -> web.StreamResponse:
    """Accept the client's upgrade (101 with ``X-Session-Id``, and the first of ``protocols`` the client offered),
    relay until both hops close, record the end."""
    settings = request.app[SERVICES].settings
    client = ClientSocket(
        compress=False,
        autoclose=False,
        autoping=True,
        heartbeat=settings.heartbeat_seconds,
        max_msg_size=settings.max_frame_bytes + 1,
        decode_text=False,
        timeout=settings.close_timeout_seconds,
        protocols=protocols,
    )
    client.headers["X-Session-Id"] = live.id
    try:
        try:
            await client.prepare(request)
        except ConnectionError as exc:
            # Gone before its 101: one counted WARNING line (docs/operations.md#logs), not aiohttp's ERROR traceback.
            live.session.keep(decide(Outcome.CLIENT_LOST).record)
            count_bad_request(CLIENT_GONE)
            log_event("client_gone", level=logging.WARNING, session=live.id, error=type(exc).__name__)
            return client
        live.accept()  # the client has its 101: a session in usage (docs/contract.md#usage)
        await relay(AiohttpLink(client), live)
    finally:
        await asyncio.shield(live.end())
    return client


async def serve_stream(
    request: web.Request,
    *,
    provider_name: str | None,
    key: str | None,
    token: str | None,
    forwarded: str,
    protocols: tuple[str, ...] = (),
) -> web.StreamResponse:
    """Everything after reading the request: refusals raised (rendered by the middleware), else the accepted and
    relayed session. ``protocols`` are the subprotocols a provider's SDK may offer (``SdkShape.subprotocols``).

    With tracing on, the whole of it is the session's trace (docs/operations.md#tracing)."""
    tracing = request.app[SERVICES].tracing
    trace = None if tracing is None else tracing.begin(request.headers, route=request.path)
    with handshake(trace):
        return await _serve_stream(request, provider_name, key, token, forwarded, protocols)


async def _serve_stream(
    request: web.Request,
    provider_name: str | None,
    key: str | None,
    token: str | None,
    forwarded: str,
    protocols: tuple[str, ...],
) -> web.StreamResponse:
    svc = request.app[SERVICES]
    if svc.sessions.draining:
        raise refusals.service_draining()
    with tracing_span("authenticate"):
        principal, provider = await database_guard(
            svc.sessions, lambda: authorize(svc.store, key, token, provider_name)
        )
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise refusals.upgrade_required()
    live = await svc.open_stream(principal, provider, forwarded)
    return await accept_and_relay(request, live, protocols)


async def audio_stream(request: web.Request) -> web.StreamResponse:
    """``GET /ws/v2/audio-stream``: refusals in the order of docs/contract.md#refusals."""
    query = split_query(raw_query(request))
    return await serve_stream(
        request,
        provider_name=query.provider,
        key=credential_from_request(request, query.api_key),
        token=query.token,
        forwarded=query.forwarded,
    )


def _provider_stream(provider: Provider) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The push handshake with ``provider`` implied and the credential where that provider's SDK puts it.

    A ``provider``/``api_key``/``token`` query pair is consumed like on ``/ws/v2/audio-stream`` and never forwarded.
    """
    assert provider.sdk is not None
    credential, subprotocols = provider.sdk.credential, provider.sdk.subprotocols

    async def provider_stream(request: web.Request) -> web.StreamResponse:
        query = split_query(raw_query(request))
        key, token = credential(request.headers, query.token)
        return await serve_stream(
            request,
            provider_name=provider.name,
            key=key,
            token=token,
            forwarded=query.forwarded,
            protocols=subprotocols,
        )

    return provider_stream
