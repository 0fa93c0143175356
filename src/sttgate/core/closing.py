"""The close decision as a table: how a session ended → what is recorded and what each side is told.

``decide(outcome, code, reason)`` covers every way a push session ends (docs/contract.md, close codes): a close code
and reason are passed through; a code that may not be sent (1005, 1006, 1015) is substituted, by 1014 "upstream
connection lost" towards the client and by 1001 "client disconnected" towards the provider; the gateway's own closes
(4002, 1011, 1008, 1012, 1009) go to both sides unless that side is already gone. ``None`` for a side means it is
closed already (or gone) and gets nothing.

Every row in which the gateway closes the provider hop (anything but the provider's own close or loss) is
``graceful`` (docs/contract.md#graceful-provider-end): the provider's end message first, unless the client already
sent it, then its end (bounded by the finish timeout), and only then ``to_upstream``. A provider that bills
connection time stops billing only then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sttgate.core import closecodes
from sttgate.core.closecodes import Close
from sttgate.core.outcomes import ClosedBy, Outcome
from sttgate.core.session import CloseRecord


@dataclass(frozen=True, slots=True)
class Decision:
    """What to record, and what to send each side (upstream first, then the ledger, then the client)."""

    record: CloseRecord
    to_upstream: Close | None
    to_client: Close | None
    # End the provider session gracefully first (its end message, then its final transcript or close, bounded), then
    # close the provider hop with ``to_upstream`` (``None``: 1000); what the provider sends meanwhile still reaches a
    # client that is connected.
    graceful: bool = False


def error_reason(code: int) -> str:
    """A protocol error carries only its code; 1009 gets its reason (aiohttp and most peers send none)."""
    return closecodes.MESSAGE_TOO_BIG.reason if code == closecodes.MESSAGE_TOO_BIG.code else ""


def _client_close(code: int, reason: str) -> Decision:
    return Decision(
        CloseRecord(code, reason, ClosedBy.CLIENT),
        closecodes.to_upstream(code, reason),
        Close(closecodes.echo_code(code), reason),
        graceful=True,
    )


def _client_lost(code: int, reason: str) -> Decision:
    return Decision(CloseRecord(closecodes.ABNORMAL, "", ClosedBy.CLIENT), closecodes.CLIENT_GONE, None, graceful=True)


def _client_error(code: int, reason: str) -> Decision:
    reason = error_reason(code)
    return Decision(
        CloseRecord(code, reason, ClosedBy.GATEWAY), closecodes.CLIENT_GONE, Close(code, reason), graceful=True
    )


def _upstream_close(code: int, reason: str) -> Decision:
    to_client = closecodes.to_client(code, reason)
    return Decision(
        CloseRecord(to_client.code, to_client.reason, ClosedBy.UPSTREAM),
        Close(closecodes.echo_code(code), reason),
        to_client,
    )


def _upstream_lost(code: int, reason: str) -> Decision:
    lost = closecodes.UPSTREAM_LOST
    return Decision(CloseRecord(lost.code, lost.reason, ClosedBy.UPSTREAM), None, lost)


def _upstream_error(code: int, reason: str) -> Decision:
    reason = error_reason(code)
    return Decision(CloseRecord(code, reason, ClosedBy.GATEWAY), None, Close(code, reason))


def _cut_off(code: int, reason: str) -> Decision:
    # 4002, or 1011 when the ledger cannot take the charge: no unpaid audio went out; the graceful end closes the
    # provider's side itself.
    return Decision(CloseRecord(code, reason, ClosedBy.GATEWAY), None, Close(code, reason), graceful=True)


def _gateway(code: int, reason: str) -> Decision:
    # Idle timeout, time limit, drain: both sides get the gateway's code, so the provider's logs say why too.
    return Decision(
        CloseRecord(code, reason, ClosedBy.GATEWAY), Close(code, reason), Close(code, reason), graceful=True
    )


_TABLE: dict[Outcome, Callable[[int, str], Decision]] = {
    Outcome.CLIENT_CLOSE: _client_close,
    Outcome.CLIENT_LOST: _client_lost,
    Outcome.CLIENT_ERROR: _client_error,
    Outcome.UPSTREAM_CLOSE: _upstream_close,
    Outcome.UPSTREAM_LOST: _upstream_lost,
    Outcome.UPSTREAM_ERROR: _upstream_error,
    Outcome.CUT_OFF: _cut_off,
    # 1008 "unmeterable audio": like a cut-off, the frame was not forwarded and the provider session ends gracefully.
    Outcome.UNMETERABLE: _cut_off,
    Outcome.GATEWAY: _gateway,
    # Not verdicts of their own (the relay waits for the other direction); if nothing better is known the gateway
    # closes both sides with what it has.
    Outcome.CLOSING: _gateway,
    Outcome.SEND_FAILED: _gateway,
}

# The relay could not wind both sockets down in time: no time is left for a graceful end.
WIND_DOWN = Decision(
    CloseRecord(closecodes.INTERNAL_ERROR.code, closecodes.INTERNAL_ERROR.reason, ClosedBy.GATEWAY),
    closecodes.CLIENT_GONE,
    closecodes.INTERNAL_ERROR,
)


# The session ends with nothing decided (the client went away before its 101, a pull task failed): nothing is
# recorded beyond "the gateway ended it", and the provider still ends gracefully, told the client is gone.
ABANDONED = Decision(CloseRecord(None, "", ClosedBy.GATEWAY), closecodes.CLIENT_GONE, None, graceful=True)


def decide(outcome: Outcome, code: int = 0, reason: str = "") -> Decision:
    """The close decision for ``outcome``; ``code``/``reason`` are what the closing side sent (a close frame without
    a status is 1005), or the gateway's own close for :attr:`Outcome.CUT_OFF` and :attr:`Outcome.GATEWAY`."""
    return _TABLE[outcome](code, reason)


def provider_ended(code: int | None, reason: str) -> tuple[CloseRecord, Close | None]:
    """A provider close seen by a ``messages()`` reader (pull tasks, no client socket): the record, and the code
    that completes the close handshake (``None``: the connection was lost, nothing to answer).

    Unlike the relay's row the provider's own reason is kept even when its code is substituted (pull webhooks quote
    it as the provider sent it)."""
    if code is None:
        lost = closecodes.UPSTREAM_LOST
        return CloseRecord(lost.code, lost.reason, ClosedBy.UPSTREAM), None
    recorded = closecodes.to_client(code, reason).code
    return CloseRecord(recorded, reason, ClosedBy.UPSTREAM), Close(closecodes.echo_code(code), reason)
