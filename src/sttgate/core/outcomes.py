"""Outcome enums shared by the layers: ``StrEnum`` so that ``.value`` is the string stored and served today."""

from __future__ import annotations

from enum import StrEnum


class ClosedBy(StrEnum):
    """Who ended a session (the ``closed_by`` column and the usage document's field)."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    GATEWAY = "gateway"
    GATEWAY_CRASH = "gateway_crash"


class SessionKind(StrEnum):
    """How a session's audio arrives: a client WebSocket, or a pull task fetching a URL."""

    WEBSOCKET = "websocket"
    PULL = "pull"
