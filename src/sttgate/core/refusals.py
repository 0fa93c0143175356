"""Refusals: every error the gateway answers with, as ``(status, code, message)`` (docs/contract.md#refusals).

Each refusal is built by a function here, fresh for every raise: an exception object carries the traceback of the
raise that used it, so one shared instance raised by concurrent handshakes would tangle their tracebacks. The web
layer renders any :class:`Refusal` as ``{"error": {"code": ..., "message": ...}}`` with its status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Refusal(Exception):
    """Not frozen: raising an exception sets ``__traceback__`` on it, which a frozen dataclass forbids.

    ``headers`` are the few a status requires (``Allow`` on a 405).
    """

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# -- credentials and account (401, 403) ---------------------------------------------------------------------------


def missing_api_key() -> Refusal:
    return Refusal(401, "missing_api_key", "An API key is required (api_key query parameter or Authorization header).")


def invalid_api_key() -> Refusal:
    return Refusal(401, "invalid_api_key", "The API key is not valid.")


def invalid_token() -> Refusal:
    return Refusal(401, "invalid_token", "The token is unknown, expired or already used.")


def streaming_not_enabled() -> Refusal:
    return Refusal(403, "streaming_not_enabled", "Streaming is not enabled for this account.")


def provider_not_allowed(provider: str, allowed: Sequence[str]) -> Refusal:
    """The key's provider allow-list (docs/contract.md#keys) excludes ``provider``; ``allowed`` is the list."""
    return Refusal(
        403,
        "provider_not_allowed",
        f"This API key may not open {provider} sessions; it is limited to: {', '.join(allowed)}.",
    )


# -- the admin API's credentials (docs/admin-api.md#authentication) ----------------------------------------------


def missing_admin_token() -> Refusal:
    return Refusal(401, "missing_admin_token", "An admin token is required (Authorization: Bearer sta_...).")


def invalid_admin_token() -> Refusal:
    return Refusal(401, "invalid_admin_token", "The admin token is not valid.")


def admin_token_revoked() -> Refusal:
    return Refusal(403, "admin_token_revoked", "The admin token has been revoked.")


# -- the request (400, 404, 422, 426) -------------------------------------------------------------------------------


def missing_provider(valid: Sequence[str]) -> Refusal:
    """No ``provider`` was given; ``valid`` are the registered provider names, in registry order."""
    return Refusal(400, "missing_provider", f"The provider parameter is required; valid providers: {', '.join(valid)}.")


def invalid_provider(valid: Sequence[str]) -> Refusal:
    """The ``provider`` given is not registered; ``valid`` are the registered provider names, in registry order."""
    return Refusal(400, "invalid_provider", f"Unknown provider; valid providers: {', '.join(valid)}.")


def invalid_audio_format(detail: str) -> Refusal:
    """A format parameter the gateway cannot read exactly as the provider will (docs/billing.md#strict-metering)."""
    return Refusal(
        400, "invalid_audio_format", f"The audio format cannot be metered exactly as the provider reads it: {detail}."
    )


def unsupported_audio_format(metered_formats: str = "") -> Refusal:
    """The declared format's duration cannot be computed from its bytes, so it could not be billed."""
    hint = f" ({metered_formats})" if metered_formats else ""
    return Refusal(400, "unsupported_audio_format", f"The gateway meters only uncompressed audio{hint}.")


def parameter_not_allowed(parameter: str) -> Refusal:
    """A query parameter the price book denies (docs/billing.md#the-price-book): it would cost the operator money
    outside any meter."""
    return Refusal(400, "parameter_not_allowed", f"The parameter {parameter} is not allowed by this gateway.")


def unpriced_model(what: str, priced: Sequence[str]) -> Refusal:
    """The session's model has no price in the price book; ``what`` says why, ``priced`` are the models it prices."""
    listed = f" Priced models: {', '.join(priced)}." if priced else ""
    return Refusal(400, "unpriced_model", f"The model cannot be priced: {what}.{listed}")


def invalid_request(message: str) -> Refusal:
    """A body, query or field the gateway cannot use; ``message`` says which and why."""
    return Refusal(400, "invalid_request", message)


def credential_parameter(name: str) -> Refusal:
    """A forwarded query parameter carries a gateway key or token (``name`` is its decoded name, ``""`` when the name
    itself is the credential): refused rather than forwarded to the provider, or silently dropped."""
    which = f"The query parameter {name[:64]!r}" if name else "A query parameter name"
    return Refusal(
        400,
        "invalid_request",
        f"{which} carries a gateway API key or token; send it only as api_key, token or the Authorization header.",
    )


def invalid_url(code: str, message: str) -> Refusal:
    """A pull task's ``audio_url`` or ``callback_url`` breaks the URL rules (``code`` names which URL)."""
    return Refusal(400, code, message)


def task_not_found() -> Refusal:
    return Refusal(404, "task_not_found", "No such task for this account.")


def not_found(message: str) -> Refusal:
    """An admin API path, or the account, key or session it names, that does not exist."""
    return Refusal(404, "not_found", message)


def conflict(message: str) -> Refusal:
    """An admin change the current state refuses (docs/admin-api.md#errors): an external id already taken, an
    idempotency key reused with another amount, a postpaid account credited, a session no longer live."""
    return Refusal(409, "conflict", message)


def admin_method_not_allowed(allowed: str) -> Refusal:
    return Refusal(405, "method_not_allowed", f"This path accepts {allowed}.", {"Allow": allowed})


def invalid_token_type(message: str) -> Refusal:
    return Refusal(422, "invalid_token_type", message)


def method_not_allowed() -> Refusal:
    """Any method but GET on a WebSocket route (HEAD included): refused before anything is read, so it never
    authenticates, spends a token or opens a provider session."""
    return Refusal(
        405, "method_not_allowed", "This endpoint only accepts GET with a WebSocket upgrade.", {"Allow": "GET"}
    )


def upgrade_required() -> Refusal:
    return Refusal(426, "websocket_upgrade_required", "This endpoint only accepts WebSocket upgrades.")


# -- limits and money (429, 402) -----------------------------------------------------------------------------------


def too_many_streams() -> Refusal:
    return Refusal(429, "too_many_streams", "The account already has its maximum number of open streams.")


def key_too_many_streams() -> Refusal:
    """The key's own stream limit (docs/contract.md#keys) is reached, while the account's may not be."""
    return Refusal(429, "too_many_streams", "This API key already has its maximum number of open streams.")


def insufficient_balance() -> Refusal:
    return Refusal(402, "insufficient_balance", "The account balance cannot pay for one 5-second cycle.")


def rate_limited(retry_after_seconds: int) -> Refusal:
    """Too many requests from one client address to a route anyone may call (the demo page's token mint)."""
    return Refusal(
        429,
        "rate_limited",
        f"Too many requests from this address; try again in {retry_after_seconds} s.",
        {"Retry-After": str(retry_after_seconds)},
    )


def budget_exceeded() -> Refusal:
    """This calendar month's (UTC) cost has reached the account's monthly budget (docs/billing.md#budgets)."""
    return Refusal(402, "budget_exceeded", "The account has reached its monthly budget.")


# -- this gateway (503) --------------------------------------------------------------------------------------------


def service_draining() -> Refusal:
    return Refusal(503, "service_draining", "The gateway is shutting down; connect again to another instance.")


def gateway_overloaded() -> Refusal:
    return Refusal(503, "gateway_overloaded", "The gateway is at its session budget; try again shortly.")


def database_unavailable() -> Refusal:
    """The database did not take the handshake's read or write within ``STTGATE_DATABASE_TIMEOUT_SECONDS``
    (docs/operations.md#database-outage)."""
    return Refusal(503, "database_unavailable", "The gateway's database is unavailable; try again shortly.")


def demo_not_configured() -> Refusal:
    return Refusal(503, "demo_not_configured", "The demo page has no valid demo API key (STTGATE_DEMO_API_KEY).")


def demo_account_postpaid() -> Refusal:
    """The demo key's account is postpaid: nothing would cap what anyone who opens the page spends."""
    return Refusal(
        503, "demo_not_configured", "The demo account must be prepaid: its balance caps what the demo page can spend."
    )


# -- the provider (4xx passthrough, 502, 504) ----------------------------------------------------------------------


def upstream_rejected(status: int, body: str) -> Refusal:
    """The provider refused the client's parameters: keep its status, quote its body."""
    quoted = body.strip()[:1000]
    return Refusal(status, "upstream_rejected", f"The provider refused the session (HTTP {status}): {quoted}")


def upstream_auth_failed() -> Refusal:
    return Refusal(502, "upstream_auth_failed", "The provider refused the gateway's credentials.")


def upstream_unavailable() -> Refusal:
    return Refusal(502, "upstream_unavailable", "The provider is unreachable or failed.")


def upstream_timeout() -> Refusal:
    return Refusal(504, "upstream_timeout", "The provider did not complete the handshake in time.")
