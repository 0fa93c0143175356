"""The per-frame loop of a push session: both directions at once, nothing buffered beyond the sockets' own limits.

Narrow on purpose, so another engine (picows, see NOTES.md) could replace it: :func:`relay` takes the accepted client
socket and the :class:`~sttgate.gateway.sessions.LiveSession`, returns once both hops are closed, and leaves the
outcome (close code, reason, who closed) recorded on the session. Each direction awaits the other side's send before
reading its next frame, so a slow side gets backpressure instead of a queue.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WebSocketError, WSMsgType, web

from sttgate.core import closecodes
from sttgate.gateway.sessions import LiveSession, echo_code, received_code

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE
ERROR = WSMsgType.ERROR

# Outcomes of one direction's loop: (kind, code, reason).
CLIENT_CLOSE = "client_close"
CLIENT_LOST = "client_lost"
CLIENT_ERROR = "client_error"
UPSTREAM_CLOSE = "upstream_close"
UPSTREAM_LOST = "upstream_lost"
UPSTREAM_ERROR = "upstream_error"
CUT_OFF = "cut_off"
SEND_FAILED = "send_failed"
CLOSING = "closing"

Outcome = tuple[str, int, str]

# How long to wait for the other direction's verdict when a send fails (the socket died under us).
_VERDICT_WAIT = 1.0
# How long the loops get to notice that both sockets are closed before they are cancelled.
_WIND_DOWN = 2.0


def _error_reason(code: int) -> str:
    return closecodes.MESSAGE_TOO_BIG.reason if code == closecodes.MESSAGE_TOO_BIG.code else ""


async def _client_to_upstream(client: web.WebSocketResponse, live: LiveSession) -> Outcome:
    receive = client.receive
    forward = live.forward
    while True:
        msg = await receive()
        t = msg.type
        if t is BINARY or t is TEXT:
            try:
                if not await forward(msg.data, t):
                    return CUT_OFF, 4002, "insufficient balance"
            except ConnectionError:
                return SEND_FAILED, 0, ""
            continue
        if t is CLOSE:
            return CLIENT_CLOSE, msg.data, msg.extra or ""
        if t is ERROR and isinstance(msg.data, WebSocketError):
            return CLIENT_ERROR, msg.data.code, _error_reason(msg.data.code)
        if t is WSMsgType.CLOSING:
            return CLOSING, 0, ""
        return CLIENT_LOST, 1006, ""


async def _upstream_to_client(client: web.WebSocketResponse, live: LiveSession) -> Outcome:
    receive = live.receive
    send = client.send_frame
    while True:
        msg = await receive()
        t = msg.type
        if t is TEXT or t is BINARY:
            try:
                await send(msg.data, t)
            except ConnectionError:
                return SEND_FAILED, 0, ""
            continue
        if t is CLOSE:
            return UPSTREAM_CLOSE, msg.data, msg.extra or ""
        if t is ERROR and isinstance(msg.data, WebSocketError):
            return UPSTREAM_ERROR, msg.data.code, _error_reason(msg.data.code)
        if t is WSMsgType.CLOSING:
            return CLOSING, 0, ""
        return UPSTREAM_LOST, 1006, ""


async def relay(client: web.WebSocketResponse, live: LiveSession) -> None:
    """Relay until one side closes, then close the other with the mapped code; record the outcome on ``live``."""
    inbound = asyncio.create_task(_client_to_upstream(client, live))
    outbound = asyncio.create_task(_upstream_to_client(client, live))
    try:
        outcome = await _first_verdict(inbound, outbound, live.close_requested)
        await _conclude(outcome, client, live)
    finally:
        # A loop may be inside a charge: let it finish (both sockets are closed, so it ends at once) before cancelling.
        await asyncio.wait((inbound, outbound), timeout=_WIND_DOWN)
        for task in (inbound, outbound):
            task.cancel()
        await asyncio.gather(inbound, outbound, return_exceptions=True)
        if not client.closed or not live.upstream.closed:
            live.record(1011, "internal error", "gateway")
            await _close_both(client, live, (1011, "internal error"), closecodes.CLIENT_GONE)


async def _first_verdict(
    inbound: asyncio.Task[Outcome], outbound: asyncio.Task[Outcome], requested: asyncio.Future[tuple[int, str]]
) -> Outcome:
    """The first meaningful outcome; a failed send defers to the other direction, which sees why (bounded)."""
    pending: set[asyncio.Future[object]] = {inbound, outbound, requested}  # type: ignore[arg-type]
    deadline: float | None = None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        if requested in done:
            code, reason = requested.result()
            return "gateway", code, reason
        for task in done:
            outcome: Outcome = task.result()  # type: ignore[assignment]
            if outcome[0] not in (SEND_FAILED, CLOSING):
                return outcome
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + _VERDICT_WAIT
    # A send failed and the other direction gave no verdict in time: the side we wrote to is gone.
    return (UPSTREAM_LOST, 1006, "") if not inbound.done() else (CLIENT_LOST, 1006, "")


async def _conclude(outcome: Outcome, client: web.WebSocketResponse, live: LiveSession) -> None:
    kind, code, reason = outcome
    up = live.upstream
    if kind == CLIENT_CLOSE:
        live.record(received_code(code), reason, "client")
        up_code, up_reason = closecodes.to_upstream(code, reason)
        await asyncio.gather(
            up.close(code=up_code, message=up_reason.encode()),
            client.close(code=echo_code(code), message=reason.encode()),
        )
    elif kind == CLIENT_LOST:
        live.record(1006, "", "client")
        await _close_both(client, live, (1006, ""), closecodes.CLIENT_GONE)
    elif kind == CLIENT_ERROR:
        live.record(code, reason, "gateway")
        await _close_both(client, live, (code, reason), closecodes.CLIENT_GONE)
    elif kind == UPSTREAM_CLOSE:
        client_code, client_reason = closecodes.to_client(code, reason)
        live.record(client_code, client_reason, "upstream")
        await asyncio.gather(
            client.close(code=client_code, message=client_reason.encode()),
            up.close(code=echo_code(code), message=reason.encode()),
        )
    elif kind == UPSTREAM_LOST:
        live.record(*closecodes.UPSTREAM_LOST, "upstream")
        await _close_both(client, live, closecodes.UPSTREAM_LOST, (1001, ""))
    elif kind == UPSTREAM_ERROR:
        live.record(code, reason, "gateway")
        await _close_both(client, live, (code, reason), (code, reason))
    elif kind == CUT_OFF:
        # The final transcript of the paid audio still reaches the client while the provider ends gracefully.
        await live.finish(code=code, reason=reason, closed_by="gateway")
        await client.close(code=code, message=reason.encode())
    else:
        live.record(code, reason, "gateway")
        # Idle timeout, drain: both sides get the gateway's code, so the provider's logs say why too.
        await _close_both(client, live, (code, reason), (code, reason))


async def _close_both(
    client: web.WebSocketResponse, live: LiveSession, to_client: tuple[int, str], to_upstream: tuple[int, str]
) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await asyncio.gather(
            client.close(code=to_client[0], message=to_client[1].encode()),
            live.upstream.close(code=to_upstream[0], message=to_upstream[1].encode()),
        )
