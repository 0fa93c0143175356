"""Opening a stream, with no HTTP in sight: authorize the client, take a stream slot, connect the provider.

The result is a registered :class:`~sttgate.gateway.live.LiveSession`; every failure is a raised
:class:`~sttgate.core.refusals.Refusal` in the order of docs/contract.md#refusals, which the web layer renders.
Push (``sttgate.web.streams``) and pull (``sttgate.web.pull_api``) both open their sessions here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from sttgate.config import DataPlane
from sttgate.core import refusals
from sttgate.core.metering import FormatError
from sttgate.core.outage import PendingEnd
from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.core.params import credential_parameter, redact_query
from sttgate.core.prices import Priced, price_session
from sttgate.core.refusals import Refusal
from sttgate.gateway import tracing
from sttgate.gateway.live import LiveSession
from sttgate.gateway.logevents import log_event
from sttgate.gateway.manager import SessionManager
from sttgate.gateway.upstream import UpstreamLink, connect_upstream
from sttgate.gateway.wsclient import connect_provider, upstream_ssl_context
from sttgate.providers import Provider, get_provider, names, secret_prefixes
from sttgate.store import Principal, SlotOutcome, Store, unavailable
from sttgate.store.auth import looks_like_token

log = logging.getLogger("sttgate.gateway")

_T = TypeVar("_T")

# Why a slot was not taken → the handshake's refusal (docs/contract.md#refusals).
_SLOT_REFUSALS: dict[SlotOutcome, Callable[[], Refusal]] = {
    SlotOutcome.TOO_MANY_STREAMS: refusals.too_many_streams,
    SlotOutcome.KEY_TOO_MANY_STREAMS: refusals.key_too_many_streams,
    SlotOutcome.INSUFFICIENT_BALANCE: refusals.insufficient_balance,
    SlotOutcome.BUDGET_EXCEEDED: refusals.budget_exceeded,
}


async def database_guard(manager: SessionManager, call: Callable[[], Awaitable[_T]]) -> _T:
    """A handshake's database work, waited for at most ``database_timeout_seconds``: a database that fails or does not
    answer in time is 503 ``database_unavailable`` (docs/operations.md#database-outage), not a 500 or a hang.

    ``call()`` runs as a task of its own that is not cancelled at the bound (a driver call cut short may wait for its
    thread in clean-up, which is the hang this is for); refusals it raises pass through."""
    task = asyncio.ensure_future(call())
    try:
        async with asyncio.timeout(manager.settings.database_timeout_seconds):
            return await asyncio.shield(task)
    except Refusal:
        raise
    except Exception as exc:
        if not unavailable(exc):
            raise
        if not task.done():
            task.add_done_callback(_consume)
        manager.database_failed()
        log.warning("event=handshake_database_unavailable error=%s", type(exc).__name__)
        raise refusals.database_unavailable() from exc


def _consume(task: asyncio.Future[Any]) -> None:
    """The outcome of a call that outlived its bound: already answered 503, so only retrieved, never logged."""
    if not task.cancelled():
        task.exception()


async def principal_for(store: Store, key: str | None, token: str | None, provider: str) -> Principal:
    """Authenticate a key, or redeem a gateway token for ``provider``, and check the account may stream: 401, 403."""
    if token:
        principal = await store.redeem_token(token, provider)
        if principal is None:
            raise refusals.invalid_token()
    elif key:
        principal = await store.authenticate(key)
        if principal is None:
            raise refusals.invalid_api_key()
    else:
        raise refusals.missing_api_key()
    if not principal.streaming_enabled:
        raise refusals.streaming_not_enabled()
    return principal


async def authorize(
    store: Store, key: str | None, token: str | None, provider_name: str | None
) -> tuple[Principal, Provider]:
    """Credential then provider, in the order of docs/contract.md#refusals (401, 403, 400, then the key's provider
    allow-list, 403); a token is single-use, so a request whose provider is missing or invalid is refused (400) before
    its token is spent. A token minted by a key limited to other providers is spent by the refusal, as by a session."""
    if key and looks_like_token(key):
        key, token = None, key
    if token and not key:
        provider = resolve_provider(provider_name)
        principal = await principal_for(store, None, token, provider.name)
    else:
        principal = await principal_for(store, key, None, "")
        provider = resolve_provider(provider_name)
    if not principal.allows(provider.name):
        raise refusals.provider_not_allowed(provider.name, principal.key_providers or ())
    return principal, provider


def resolve_provider(name: str | None) -> Provider:
    """The provider named exactly ``name``: 400 ``missing_provider`` / ``invalid_provider`` otherwise."""
    if not name:
        raise refusals.missing_provider(names())
    provider = get_provider(name)
    if provider is None:
        raise refusals.invalid_provider(names())
    return provider


async def open_stream(
    manager: SessionManager,
    http: aiohttp.ClientSession,
    principal: Principal,
    provider: Provider,
    forwarded: str,
    *,
    kind: SessionKind = SessionKind.WEBSOCKET,
    session_id: str | None = None,
) -> LiveSession:
    """Take a stream slot (429/402) and connect the provider over ``http`` (502/504/4xx): a registered
    :class:`LiveSession` of ``manager``.

    Raises :class:`Refusal`. A slot taken for a session whose upstream could not be opened is released at once.
    """
    if manager.draining:
        raise refusals.service_draining()
    # The client's credential never reaches the provider, under any parameter name (docs/contract.md#forwarding).
    smuggled = credential_parameter(forwarded)
    if smuggled is not None:
        raise refusals.credential_parameter(smuggled)
    # The meter reads the declared format exactly as the provider will, or the session is refused (docs/billing.md).
    refused = provider.format_refusal(forwarded)
    if refused is not None:
        if refused.error is FormatError.UNSUPPORTED:
            raise refusals.unsupported_audio_format(refused.detail)
        raise refusals.invalid_audio_format(refused.detail)
    # The price, fixed for the session, before any provider is contacted (400 parameter_not_allowed / unpriced_model);
    # the default model joins the forwarded query when the client named none (docs/billing.md#the-price-book).
    price = price_session(manager.prices(provider.name), provider.model_param, forwarded)
    forwarded = price.forwarded_with_default_model
    # Admission control (docs/configuration.md#admission-control): an overloaded relay buffers instead of shedding
    # load, so refuse clearly. Push sessions and pull tasks both come through here and count alike: each holds a
    # provider socket and relays on this process's event loop.
    budget = manager.settings.max_sessions_per_process
    if budget and len(manager.live) + manager.opening >= budget:
        raise refusals.gateway_overloaded()
    session_id = session_id or str(uuid.uuid4())
    manager.opening += 1
    try:
        upstream = await _take_slot_and_connect(manager, http, principal, provider, forwarded, kind, session_id, price)
    finally:
        manager.opening -= 1
    live = LiveSession(
        manager,
        session_id=session_id,
        principal=principal,
        provider=provider,
        kind=kind,
        forwarded=forwarded,
        upstream=upstream,
        price=price,
        # The slot's transaction held one cycle of a prepaid balance (Slots.open_session; docs/billing.md#holds).
        holds=int(principal.balance_nanos is not None and price.cycle_price_nanos > 0),
    )
    manager.register(live)
    if live.trace is not None:
        live.trace.set(
            session=session_id, account=principal.account_id, provider=provider.name, model=price.model or ""
        )
    log_event(
        "session_start",
        session=session_id,
        account=principal.account_id,
        key=principal.key_id,
        gateway=manager.gateway_id,
        provider=provider.name,
        kind=kind,
        query=redact_query(forwarded, secret_prefixes()),
        model=price.model or "",
        rate_usd_per_hour=str(price.rate_usd_per_hour),
    )
    return live


async def _take_slot_and_connect(
    manager: SessionManager,
    http: aiohttp.ClientSession,
    principal: Principal,
    provider: Provider,
    forwarded: str,
    kind: SessionKind,
    session_id: str,
    price: Priced,
) -> UpstreamLink:
    store = manager.store
    try:
        with tracing.span("slot"):
            slot = await database_guard(
                manager,
                lambda: store.open_session(
                    session_id=session_id,
                    account_id=principal.account_id,
                    kind=kind,
                    provider=provider.name,
                    gateway_id=manager.gateway_id,
                    min_balance_nanos=price.cycle_price_nanos,
                    lease_ttl=manager.settings.lease_ttl_seconds,
                    model=price.model,
                    rate_usd_per_hour=str(price.rate_usd_per_hour),
                    basis=price.basis.value,
                    api_key_id=principal.key_id,
                    key_max_streams=principal.key_max_streams,
                ),
            )
    except Refusal as unavailable_db:
        if isinstance(unavailable_db.__cause__, TimeoutError):
            # The slot may still have been taken (a write that timed out may commit later): end it once the database
            # is back, as a refused handshake (no session in usage).
            manager.keep_end(PendingEnd(session_id, 0.0, 0, 0, None, unavailable_db.code, ClosedBy.GATEWAY))
        raise
    if slot is not SlotOutcome.OPENED:
        raise _SLOT_REFUSALS[slot]()
    settings = manager.settings
    try:
        with tracing.span("upstream_connect"):
            if settings.data_plane is DataPlane.AIOHTTP:
                return await connect_upstream(
                    http, settings, manager.metrics, provider, forwarded, session_id=session_id
                )
            context = upstream_ssl_context(settings.upstream_ca_file)
            return await connect_provider(
                settings, manager.metrics, provider, forwarded, context, session_id=session_id
            )
    except BaseException as exc:
        refusal = exc if isinstance(exc, Refusal) else None
        await asyncio.shield(
            store.end_session(
                session_id,
                audio_seconds=0.0,
                cycles=0,
                cost_nanos=0,
                close_code=None,
                close_reason=refusal.code if refusal else "handshake aborted",
                closed_by=ClosedBy.GATEWAY,
            )
        )
        raise
