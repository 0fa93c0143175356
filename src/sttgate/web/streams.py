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

from aiohttp import hdrs, web

from sttgate.core import closecodes, refusals
from sttgate.core.closing import decide
from sttgate.core.outcomes import Outcome
from sttgate.core.params import split_query
from sttgate.gateway import passthrough
from sttgate.gateway.framesocket import FrameSocket
from sttgate.gateway.live import LiveSession
from sttgate.gateway.logevents import log_event
from sttgate.gateway.opening import authorize, database_guard
from sttgate.gateway.relay import relay as aiohttp_relay
from sttgate.gateway.tracing import handshake
from sttgate.gateway.tracing import span as tracing_span
from sttgate.gateway.upstream import AiohttpLink
from sttgate.gateway.wsclient import accept_key
from sttgate.providers import PROVIDERS, Provider
from sttgate.web.credentials import credential_from_request, raw_query
from sttgate.web.logfilter import CLIENT_GONE, count_bad_request
from sttgate.web.services import SERVICES, Services


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
    relay until both hops close, record the end. The passthrough data plane hands the socket to its relay and returns
    at once (the relay runs as a task of its own); the aiohttp one relays within the handler."""
    if isinstance(live.upstream, FrameSocket):
        return _hand_over(request, live, protocols)
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
            _client_gone(live, exc)
            return client
        live.accept()  # the client has its 101: a session in usage (docs/contract.md#usage)
        await aiohttp_relay(AiohttpLink(client), live)
    finally:
        await asyncio.shield(live.end())
    return client


def _client_gone(live: LiveSession, exc: BaseException) -> None:
    """Gone before its 101: one counted WARNING line (docs/operations.md#logs), not aiohttp's ERROR traceback."""
    live.session.keep(decide(Outcome.CLIENT_LOST).record)
    count_bad_request(CLIENT_GONE)
    log_event("client_gone", level=logging.WARNING, session=live.id, error=type(exc).__name__)


class _EarlyBytes:
    """Takes, as aiohttp's parser of an upgraded connection, the bytes it read behind the upgrade request (a client
    may send its first frames right behind it) until the socket is handed over: none is lost."""

    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class HandedOver(web.StreamResponse):
    """What the handler returns once the relay owns the socket: aiohttp writes nothing for it (the 101 went out with
    the hand-over) and only logs the request."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _handshake(request: web.Request, live: LiveSession, protocols: tuple[str, ...]) -> bytes:
    """The 101 for the client's upgrade (checked by ``can_prepare`` already): RFC 6455 §4.2.2, no extension."""
    offered = [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")]
    chosen = next((p for p in offered if p and p in protocols), None)
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: upgrade",
        f"Sec-WebSocket-Accept: {accept_key(request.headers[hdrs.SEC_WEBSOCKET_KEY])}",
        f"X-Session-Id: {live.id}",
    ]
    if chosen:
        lines.append(f"Sec-WebSocket-Protocol: {chosen}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _hand_over(request: web.Request, live: LiveSession, protocols: tuple[str, ...]) -> web.StreamResponse:
    """Send the 101 and hand the client's socket to the passthrough relay, releasing aiohttp's hold on it.

    aiohttp's own WebSocket does the same first step (``set_parser``: the bytes read behind the upgrade request go to
    the parser given, here :class:`_EarlyBytes`). Then the transport gets the relay's protocol, and aiohttp is told
    the connection is gone with its transport reference cleared first, so it drops its bookkeeping (its connection
    list, keep-alive timer, handler) without closing the socket: neither this handler's end nor a server shutdown
    writes into the stream or closes it (a shutdown ends live sessions with 1012 close frames through the relay)."""
    svc = request.app[SERVICES]
    settings = svc.settings
    handler = request.protocol
    transport = request.transport
    if transport is None or transport.is_closing():
        _client_gone(live, ConnectionResetError("the client left before its 101"))
        _track(svc, asyncio.ensure_future(asyncio.shield(live.end())))
        return HandedOver()
    early = _EarlyBytes()
    handler.set_parser(early)  # type: ignore[arg-type]
    transport.write(_handshake(request, live, protocols))
    client = FrameSocket(
        client_side=False,
        max_size=settings.max_frame_bytes,
        close_timeout=settings.close_timeout_seconds,
        heartbeat=settings.heartbeat_seconds,
    )
    transport.set_protocol(client)
    client.connection_made(transport)  # (``request.transport`` is typed as a base transport; it is a stream one)
    release = svc.connections.hand_over(handler)  # it still holds a descriptor: counted until the relay ends
    handler.transport = None
    handler.connection_lost(None)
    live.accept()  # the client has its 101: a session in usage (docs/contract.md#usage)
    # Wired now, not in the task: the client may send the moment it has its 101.
    relay = passthrough.Relay(client, live, bytes(early.data))
    # The relay's task starts when its end begins; until then shut-down waits for this future, done with the task.
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _track(svc, done)

    def start() -> None:
        task = asyncio.ensure_future(_relay(relay, live, release))
        _track(svc, task)
        task.add_done_callback(lambda _: done.set_result(None))

    relay.when_ending(start)
    return HandedOver()


async def _relay(relay: passthrough.Relay, live: LiveSession, release: Callable[[], None]) -> None:
    try:
        await relay.run()
    finally:
        release()
        await asyncio.shield(live.end())


def _track(svc: Services, task: asyncio.Future[None]) -> None:
    """Keep a relay task referenced until it ends; the app's shut-down waits for the rest."""
    svc.relays.add(task)
    task.add_done_callback(svc.relays.discard)


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
