"""The per-frame loop of a push session: both directions at once, nothing buffered beyond the sockets' own limits.

Narrow on purpose, so another engine could replace it: :func:`relay` takes the client hop as a
:class:`~sttgate.gateway.upstream.ClientLink` and the :class:`~sttgate.gateway.live.LiveSession`, returns once both
hops are closed, and leaves the outcome (close code, reason, who closed) recorded on the session. Each direction
awaits the other side's send before reading its next frame, so a slow side gets backpressure instead of a queue. What
each side is told at the end is :func:`sttgate.core.closing.decide`; a graceful row ends the provider session first
(docs/contract.md#graceful-provider-end) while the provider's last messages are still relayed to a client that is there.
"""

from __future__ import annotations

import asyncio
import contextlib

from sttgate.core import closecodes
from sttgate.core.closing import WIND_DOWN, Decision, decide
from sttgate.core.outcomes import Outcome
from sttgate.core.session import State
from sttgate.gateway.live import ChargeFailed, LiveSession, UnmeterableFrame
from sttgate.gateway.upstream import DATA, TEXT, ClientLink, FrameKind

CLOSE = FrameKind.CLOSE
ERROR = FrameKind.ERROR
CLOSING = FrameKind.CLOSING
OPEN = State.OPEN

# How one direction's loop ended: (outcome, code, reason).
Verdict = tuple[Outcome, int, str]

# How long to wait for the other direction's verdict when a send fails (the socket died under us).
_VERDICT_WAIT = 1.0
# How long the loops get to notice that both sockets are closed before they are cancelled.
_WIND_DOWN = 2.0


async def _client_to_upstream(client: ClientLink, live: LiveSession) -> Verdict:
    receive = client.receive
    admit = live.admit
    send = live.upstream.send
    session = live.session
    while True:
        frame = await receive()
        kind = frame[0]
        if kind in DATA:
            if session.state is not OPEN:
                continue  # the session is ending: nothing more goes to the provider, nothing more is metered
            data = frame[1]
            try:
                if not admit(data, kind) and not await live.pay():
                    return Outcome.CUT_OFF, *live.cut_off_close
                await send(data, kind)
            except ChargeFailed:
                return Outcome.CUT_OFF, *closecodes.BILLING_UNAVAILABLE
            except UnmeterableFrame:
                return Outcome.UNMETERABLE, *closecodes.UNMETERABLE_AUDIO
            except ConnectionError:
                return Outcome.SEND_FAILED, 0, ""
            if kind == TEXT:
                live.last_text = data  # read only at the end: was the last one sent the provider's end message?
            # Counted here rather than by a call into the session: this is the per-frame path.
            live.frames_up += 1
            live.bytes_up += len(data)
            continue
        end, code, reason = client.ended(frame)
        if end is CLOSE:
            return Outcome.CLIENT_CLOSE, code, reason
        if end is ERROR:
            return Outcome.CLIENT_ERROR, code, ""
        if end is CLOSING:
            return Outcome.CLOSING, 0, ""
        return Outcome.CLIENT_LOST, closecodes.ABNORMAL, ""


async def _upstream_to_client(client: ClientLink, live: LiveSession) -> Verdict:
    try:
        return await _relay_upstream(client, live)
    finally:
        # A graceful end under way reads the provider's last messages itself from now on.
        live.detach_reader()


async def _relay_upstream(client: ClientLink, live: LiveSession) -> Verdict:
    upstream = live.upstream
    receive = upstream.receive
    received = live.received
    send = client.send
    while True:
        frame = await receive()
        received(frame)
        kind = frame[0]
        if kind in DATA:
            try:
                await send(frame[1], kind)
            except ConnectionError:
                return Outcome.SEND_FAILED, 0, ""
            continue
        end, code, reason = upstream.ended(frame)
        if end is CLOSE:
            return Outcome.UPSTREAM_CLOSE, code, reason
        if end is ERROR:
            return Outcome.UPSTREAM_ERROR, code, ""
        if end is CLOSING:
            return Outcome.CLOSING, 0, ""
        return Outcome.UPSTREAM_LOST, closecodes.ABNORMAL, ""


async def relay(client: ClientLink, live: LiveSession) -> None:
    """Relay until one side closes, then close the other with the mapped code; record the outcome on ``live``."""
    live.attach_reader()
    inbound = asyncio.create_task(_client_to_upstream(client, live))
    outbound = asyncio.create_task(_upstream_to_client(client, live))
    await conclude(client, live, inbound, outbound)


async def conclude(
    client: ClientLink, live: LiveSession, inbound: asyncio.Future[Verdict], outbound: asyncio.Future[Verdict]
) -> None:
    """Wait for the first meaningful verdict of either direction (or a close the gateway requested), perform the
    close decision, and wind both directions down. Any data plane's relay ends here, so every one closes alike."""
    try:
        verdict = await _first_verdict(inbound, outbound, live.close_requested)
        await _conclude(decide(*verdict), client, live)
    finally:
        # A loop may be inside a charge: let it finish (both sockets are closed, so it ends at once) before cancelling.
        await asyncio.wait((inbound, outbound), timeout=_WIND_DOWN)
        for task in (inbound, outbound):
            task.cancel()
        await asyncio.gather(inbound, outbound, return_exceptions=True)
        if not client.closed or not live.upstream.closed:
            live.session.keep(WIND_DOWN.record)
            await _close(client, live, WIND_DOWN)


async def _first_verdict(
    inbound: asyncio.Future[Verdict], outbound: asyncio.Future[Verdict], requested: asyncio.Future[tuple[int, str]]
) -> Verdict:
    """The first meaningful verdict; a failed send defers to the other direction, which sees why (bounded)."""
    pending: set[asyncio.Future[object]] = {inbound, outbound, requested}  # type: ignore[arg-type]
    deadline: float | None = None
    failed_send = Outcome.CLOSING
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            break
        if requested in done:
            code, reason = requested.result()
            return Outcome.GATEWAY, code, reason
        for task in done:
            verdict: Verdict = task.result()  # type: ignore[assignment]
            if verdict[0] is Outcome.SEND_FAILED:
                # Writing to the other side failed: that side is gone, unless its own reader says more.
                failed_send = Outcome.UPSTREAM_LOST if task is inbound else Outcome.CLIENT_LOST
            elif verdict[0] is not Outcome.CLOSING:
                return verdict
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + _VERDICT_WAIT
    return failed_send, closecodes.ABNORMAL, ""


async def _conclude(decision: Decision, client: ClientLink, live: LiveSession) -> None:
    """Perform the close decision; the session row is ended before the client sees its close, so a client that
    reconnects at once finds its stream slot free."""
    record = decision.record
    if decision.graceful:
        # The provider's end message, then its end (bounded): its final transcript still reaches a client that is
        # there; the provider hop is then closed with the decision's code.
        await live.finish(
            code=record.code, reason=record.reason, closed_by=record.closed_by, upstream_close=decision.to_upstream
        )
    else:
        live.session.keep(record)
    await _close(client, live, decision)


async def _close(client: ClientLink, live: LiveSession, decision: Decision) -> None:
    """Upstream first, then the ledger, then the client; ``None`` = that side is already closed or gone."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        if decision.to_upstream is not None:
            await live.upstream.close(*decision.to_upstream)
        await live.end()
        if decision.to_client is not None:
            await client.close(*decision.to_client)
