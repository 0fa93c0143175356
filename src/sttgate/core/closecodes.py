"""Close codes (docs/contract.md#close-codes): what each side is told when the other closes, and the gateway's own.

A close code and reason are passed through verbatim. A code that may not be sent on the wire is replaced, because
the gateway cannot repeat it: when the upstream side closed, the client gets 1014 "upstream connection lost"; when
the client side closed, the upstream gets 1001 "client disconnected". That covers no close frame at all (``None``,
the TCP connection just ended), 1006 (abnormal), 1015 (TLS failure) and 1005 (a close frame without a status):
docs/contract.md#passthrough-and-substitution lists 1005 among the substituted codes, so the gateway does not
invent a 1000 the peer never sent.
"""

from __future__ import annotations

from typing import NamedTuple


class Close(NamedTuple):
    code: int
    reason: str


# Gateway-originated closes (docs/contract.md#gateway-close-codes).
INSUFFICIENT_BALANCE = Close(4002, "insufficient balance")
# This month's cost reached the account's monthly budget (docs/billing.md#budgets).
BUDGET_EXCEEDED = Close(4002, "budget exceeded")
SERVICE_RESTART = Close(1012, "service restart")
UPSTREAM_LOST = Close(1014, "upstream connection lost")
MESSAGE_TOO_BIG = Close(1009, "message too big")
IDLE_TIMEOUT = Close(1008, "idle timeout")
# A client frame the meter cannot read exactly as the provider will: it was not forwarded (docs/billing.md).
UNMETERABLE_AUDIO = Close(1008, "unmeterable audio")
SESSION_TIME_LIMIT = Close(1008, "session time limit")
# The account's streaming permission was withdrawn while the session ran (docs/contract.md#gateway-close-codes).
STREAMING_DISABLED = Close(1008, "streaming disabled")
# An operator ended the session through the admin API (docs/admin-api.md#close-a-session).
CLOSED_BY_OPERATOR = Close(1008, "closed by operator")
# The ledger could not take a prepaid charge: the frame was not forwarded.
BILLING_UNAVAILABLE = Close(1011, "billing unavailable")
# The relay could not finish closing both sides in time.
INTERNAL_ERROR = Close(1011, "internal error")
# What the upstream gets when the client vanished (1001 "going away").
CLIENT_GONE = Close(1001, "client disconnected")

# RFC 6455 §7.4.1: a close frame without a status code is reported as 1005; a connection that ended without a close
# frame as 1006. Neither may be sent.
NO_STATUS = 1005
ABNORMAL = 1006

# RFC 6455 §7.4.2: a close reason is at most 123 bytes of UTF-8.
MAX_REASON_BYTES = 123


def may_send(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 §7.4): 1000–1003, 1007–1014, 3000–4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def echo_code(code: int) -> int:
    """The code that completes a close handshake the peer started (its own, when it may be sent)."""
    return code if may_send(code) else 1000


def clip_reason(reason: str) -> str:
    """``reason`` cut to 123 UTF-8 bytes on a character boundary, so a close frame can always carry it."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[:MAX_REASON_BYTES].decode("utf-8", errors="ignore")


def to_client(upstream_code: int | None, reason: str = "") -> Close:
    """What the client gets when the upstream closed with ``upstream_code`` (``None``: no close frame)."""
    if upstream_code is None or not may_send(upstream_code):
        return UPSTREAM_LOST
    return Close(upstream_code, clip_reason(reason))


def to_upstream(client_code: int | None, reason: str = "") -> Close:
    """What the upstream gets when the client closed with ``client_code`` (``None``: no close frame)."""
    if client_code is None or not may_send(client_code):
        return CLIENT_GONE
    return Close(client_code, clip_reason(reason))
