"""Refusals: every error the gateway answers with, as ``(status, code, message)``.

The HTTP shell turns a :class:`Refusal` into ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Refusal(Exception):
    """Not frozen: raising an exception sets ``__traceback__`` on it, which a frozen dataclass forbids."""

    status: int
    code: str
    message: str

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


MISSING_API_KEY = Refusal(
    401, "missing_api_key", "An API key is required (api_key query parameter or Authorization header)."
)
INVALID_API_KEY = Refusal(401, "invalid_api_key", "The API key is not valid.")
INVALID_TOKEN = Refusal(401, "invalid_token", "The token is unknown, expired or already used.")
STREAMING_NOT_ENABLED = Refusal(403, "streaming_not_enabled", "Streaming is not enabled for this account.")
TOO_MANY_STREAMS = Refusal(429, "too_many_streams", "The account already has its maximum number of open streams.")
INSUFFICIENT_BALANCE = Refusal(402, "insufficient_balance", "The account balance cannot pay for one 5-second cycle.")
UPSTREAM_AUTH_FAILED = Refusal(502, "upstream_auth_failed", "The provider refused the gateway's credentials.")
UPSTREAM_UNAVAILABLE = Refusal(502, "upstream_unavailable", "The provider is unreachable or failed.")
UPSTREAM_TIMEOUT = Refusal(504, "upstream_timeout", "The provider did not complete the handshake in time.")
SERVICE_DRAINING = Refusal(503, "service_draining", "The gateway is shutting down; connect again to another instance.")
GATEWAY_OVERLOADED = Refusal(503, "gateway_overloaded", "The gateway is at its session budget; try again shortly.")


def invalid_audio_format(detail: str) -> Refusal:
    """A format parameter the gateway cannot read exactly as the provider will (docs/billing.md#strict-metering)."""
    return Refusal(
        400, "invalid_audio_format", f"The audio format cannot be metered exactly as the provider reads it: {detail}."
    )


def unsupported_audio_format(metered_formats: str) -> Refusal:
    """An encoding whose duration cannot be known from its length; ``metered_formats`` says what can be metered."""
    hint = f" ({metered_formats})" if metered_formats else ""
    return Refusal(400, "unsupported_audio_format", f"The gateway meters only uncompressed audio{hint}.")


def upstream_rejected(status: int, body: str) -> Refusal:
    """The provider refused the client's parameters: keep its status, quote its body."""
    quoted = body.strip()[:1000]
    return Refusal(status, "upstream_rejected", f"The provider refused the session (HTTP {status}): {quoted}")


def missing_provider(valid: Sequence[str]) -> Refusal:
    """No ``provider`` was given; ``valid`` are the registered provider names, in registry order."""
    return Refusal(400, "missing_provider", f"The provider parameter is required; valid providers: {', '.join(valid)}.")


def invalid_provider(valid: Sequence[str]) -> Refusal:
    """The ``provider`` given is not registered; ``valid`` are the registered provider names, in registry order."""
    return Refusal(400, "invalid_provider", f"Unknown provider; valid providers: {', '.join(valid)}.")
