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
from sttgate.gateway.sessions import ChargeFailed, LiveSession, echo_code, received_code

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
                    return CUT_OFF, *closecodes.INSUFFICIENT_BALANCE
            except ChargeFailed:
                return CUT_OFF, 1011, "billing unavailable"
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
    live.reader_attached = True
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
            await _close(client, live, closecodes.CLIENT_GONE, (1011, "internal error"))


async def _first_verdict(
    inbound: asyncio.Task[Outcome], outbound: asyncio.Task[Outcome], requested: asyncio.Future[tuple[int, str]]
) -> Outcome:
    """The first meaningful outcome; a failed send defers to the other direction, which sees why (bounded)."""
    pending: set[asyncio.Future[object]] = {inbound, outbound, requested}  # type: ignore[arg-type]
    deadline: float | None = None
    failed_send = CLOSING
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
            if outcome[0] == SEND_FAILED:
                # Writing to the other side failed: that side is gone, unless its own reader says more.
                failed_send = UPSTREAM_LOST if task is inbound else CLIENT_LOST
            elif outcome[0] != CLOSING:
                return outcome
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + _VERDICT_WAIT
    return failed_send, 1006, ""


async def _conclude(outcome: Outcome, client: web.WebSocketResponse, live: LiveSession) -> None:
    """Close the other side as the outcome says; the session row is ended before the client sees its close, so a
    client that reconnects at once finds its stream slot free."""
    kind, code, reason = outcome
    if kind == CLIENT_CLOSE:
        live.record(received_code(code), reason, "client")
        await _close(client, live, closecodes.to_upstream(code, reason), (echo_code(code), reason))
    elif kind == CLIENT_LOST:
        live.record(1006, "", "client")
        await _close(client, live, closecodes.CLIENT_GONE, None)
    elif kind == CLIENT_ERROR:
        live.record(code, reason, "gateway")
        await _close(client, live, closecodes.CLIENT_GONE, (code, reason))
    elif kind == UPSTREAM_CLOSE:
        to_client = closecodes.to_client(code, reason)
        live.record(*to_client, "upstream")
        await _close(client, live, (echo_code(code), reason), to_client)
    elif kind == UPSTREAM_LOST:
        live.record(*closecodes.UPSTREAM_LOST, "upstream")
        await _close(client, live, None, closecodes.UPSTREAM_LOST)
    elif kind == UPSTREAM_ERROR:
        live.record(code, reason, "gateway")
        await _close(client, live, None, (code, reason))
    elif kind == CUT_OFF:
        # 4002, or 1011 when the ledger cannot take the charge: either way no unpaid audio went out, and the final
        # transcript of the paid audio still reaches the client while the provider ends gracefully.
        await live.finish(code=code, reason=reason, closed_by="gateway")
        await _close(client, live, None, (code, reason))
    else:
        live.record(code, reason, "gateway")
        # Idle timeout, drain: both sides get the gateway's code, so the provider's logs say why too.
        await _close(client, live, (code, reason), (code, reason))


async def _close(
    client: web.WebSocketResponse,
    live: LiveSession,
    to_upstream: tuple[int, str] | None,
    to_client: tuple[int, str] | None,
) -> None:
    """Upstream first, then the ledger, then the client; ``None`` = that side is already closed or gone."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        if to_upstream is not None:
            await live.upstream.close(code=to_upstream[0], message=to_upstream[1].encode())
        await live.end()
        if to_client is not None:
            await client.close(code=to_client[0], message=to_client[1].encode())
