"""Outcome enums: who closed a session, how a relay direction ended, how a pull task ended.

They are ``StrEnum`` so that each value is exactly the string stored in the database and served in documents today
(``closed_by`` in the usage document, a task's ``status``); comparing a member with that string is true.
"""

from __future__ import annotations

from enum import StrEnum


class ClosedBy(StrEnum):
    """Who ended a session (the ``closed_by`` column; docs/contract.md)."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    GATEWAY = "gateway"
    # Written by the reaper for a session whose gateway died or stalled (its lease expired).
    GATEWAY_CRASH = "gateway_crash"


class Outcome(StrEnum):
    """How a relay direction ended, or why the gateway closes a session; rows of :func:`sttgate.core.closing.decide`."""

    CLIENT_CLOSE = "client_close"  # the client sent a close frame
    CLIENT_LOST = "client_lost"  # the client's connection ended without one
    CLIENT_ERROR = "client_error"  # the client broke the protocol (e.g. a frame over the size limit: 1009)
    UPSTREAM_CLOSE = "upstream_close"
    UPSTREAM_LOST = "upstream_lost"
    UPSTREAM_ERROR = "upstream_error"
    CUT_OFF = "cut_off"  # the balance (4002) or the ledger (1011) cannot pay the next cycle
    UNMETERABLE = "unmeterable"  # a client frame the meter cannot read as the provider will (1008), not forwarded
    SEND_FAILED = "send_failed"  # writing to the other side failed: that side's reader knows why
    CLOSING = "closing"  # the socket is already closing: not a verdict
    GATEWAY = "gateway"  # the gateway asked the session to close (idle timeout, drain)


class TaskStatus(StrEnum):
    """How a pull task ended (its ``status``; the ``ended`` webhook)."""

    STOPPED = "stopped"
    SOURCE_ENDED = "source_ended"
    SOURCE_FAILED = "source_failed"
    PROVIDER_CLOSED = "provider_closed"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BUDGET_EXCEEDED = "budget_exceeded"
    GATEWAY_SHUTDOWN = "gateway_shutdown"


class SessionKind(StrEnum):
    """How a session's audio arrives: a client WebSocket, or a pull task fetching a URL (the ``kind`` column)."""

    WEBSOCKET = "websocket"
    PULL = "pull"
