"""The live-transcription page (docs/contract.md#demo-page): ``GET /demo/``, its static files (``web/static/``
and each provider's page adapter) and ``POST /demo/token``, which mints a token with the operator's configured demo
key so that the browser never holds a key. Registered only when ``settings.demo_page`` (off by default).

Anyone who reaches the page spends the demo account's money, so the mint is guarded: a token bucket per client
address (:mod:`sttgate.core.ratelimit`, 429 ``rate_limited``), a prepaid demo account only (its balance is the spend
cap; 402 ``insufficient_balance`` once it cannot pay a cycle, so the page can say so before it connects), and every
demo token caps its session at ``demo_max_session_seconds``.
"""

from __future__ import annotations

import html
import time
from importlib import resources

from aiohttp import web

from sttgate.admin import isoformat
from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.core.ratelimit import RateLimiter
from sttgate.core.refusals import (
    demo_account_postpaid,
    demo_not_configured,
    insufficient_balance,
    invalid_provider,
    rate_limited,
    streaming_not_enabled,
)
from sttgate.providers import PROVIDERS, get_provider, names
from sttgate.web.services import SERVICES
from sttgate.web.tokens import json_object, provider_argument, token_response

DEMO_TOKEN_SECONDS = 60
# Client addresses whose token buckets are remembered at once (per process); beyond that the least recently heard
# is forgotten. About 100 bytes each.
DEMO_RATE_CLIENTS = 10_000
DEMO_LIMITER = web.AppKey("demo_limiter", RateLimiter)
DEMO_FILES = {"demo.js", "demo.css", "pcm-worklet.js"}
# The page talks to its own origin only.
DEMO_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"


def setup(app: web.Application) -> None:
    """Register the page's routes when the app's settings enable it."""
    settings = app[SERVICES].settings
    if settings.demo_page:
        app[DEMO_LIMITER] = RateLimiter(
            rate=settings.demo_tokens_per_minute / 60, burst=settings.demo_token_burst, max_clients=DEMO_RATE_CLIENTS
        )
        app.router.add_get("/demo", demo_redirect)
        app.router.add_get("/demo/", demo_page)
        app.router.add_get("/demo/static/{name}", demo_static)
        app.router.add_post("/demo/token", demo_token)


def _static_file(name: str) -> bytes:
    return (resources.files("sttgate.web") / "static" / name).read_bytes()


async def demo_redirect(request: web.Request) -> web.Response:
    """``/demo`` → ``/demo/``, relative so that a reverse proxy's path prefix survives (the page uses relative URLs)."""
    raise web.HTTPPermanentRedirect("demo/")


def _provider_options() -> str:
    """The page's provider ``<option>`` list, from the registry: each names its route and its page adapter."""
    options = []
    for provider in PROVIDERS.values():
        page = provider.page_info()
        if page is not None:
            options.append(
                f'<option value="{html.escape(page["name"])}" data-path="{html.escape(page["path"])}"'
                f' data-script="{html.escape(page["script"])}">{html.escape(page["label"])}</option>'
            )
    return "\n          ".join(options)


async def demo_page(request: web.Request) -> web.Response:
    page = _static_file("index.html").decode("utf-8").replace("<!-- providers -->", _provider_options())
    return web.Response(
        body=page.encode("utf-8"),
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"},
    )


def _page_script(name: str) -> bytes | None:
    """A provider's page adapter, served as ``provider-<name>.js``."""
    for provider in PROVIDERS.values():
        page = provider.page_info()
        if page is not None and page["script"] == name and provider.page_script is not None:
            return (resources.files("sttgate.providers") / "page" / provider.page_script).read_bytes()
    return None


async def demo_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = _static_file(name) if name in DEMO_FILES else _page_script(name)
    if body is None:
        raise web.HTTPNotFound()
    content_type = "text/css" if name.endswith(".css") else "text/javascript"
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers={"Cache-Control": "no-cache"})


def client_address(request: web.Request, header: str) -> str:
    """The address a demo token is counted against: the last value of the proxy's ``header`` when one is configured
    (the one the operator's own proxy appended; earlier values are the client's to invent), else the TCP peer."""
    if header:
        values = [v.strip() for v in ",".join(request.headers.getall(header, [])).split(",") if v.strip()]
        if values:
            return values[-1]
    return request.remote or "unknown"


async def demo_token(request: web.Request) -> web.Response:
    """The page's backend: a token bound to the chosen provider, minted with the server's demo key.

    Also reports the price of a 5-second cycle so the page can show the session's running cost exactly as billed, and
    the session limit the token carries. Rate-limited first, before any parsing or database work.
    """
    svc = request.app[SERVICES]
    settings, store = svc.settings, svc.store
    verdict = request.app[DEMO_LIMITER].take(
        client_address(request, settings.demo_client_address_header), time.monotonic()
    )
    if not verdict.allowed:
        raise rate_limited(verdict.retry_after_whole_seconds)
    body = await json_object(request)
    provider_name = provider_argument(body.get("provider"))
    provider = get_provider(provider_name or "")
    if provider is None:
        raise invalid_provider(names())
    demo_key = settings.demo_api_key.get_secret_value()
    principal = await store.authenticate(demo_key) if demo_key else None
    if principal is None:
        raise demo_not_configured()
    if not principal.streaming_enabled:
        raise streaming_not_enabled()
    if principal.balance_nanos is None:
        raise demo_account_postpaid()
    # The page names no model, so its sessions cost the default model's cycle (docs/billing.md#the-price-book).
    rate = svc.sessions.prices(provider.name).default_rate
    cycle_nanos = cycle_price_nanos(rate)
    if principal.balance_nanos < cycle_nanos:
        raise insufficient_balance()
    minted = await store.mint_token(
        principal.account_id,
        DEMO_TOKEN_SECONDS,
        provider.name,
        max_session_seconds=settings.demo_max_session_seconds,
        key_id=principal.key_id,
    )
    return token_response(
        {
            "token": minted.token,
            "expires_at": isoformat(minted.expires_at),
            "provider": provider.name,
            "rate_usd_per_hour": str(rate),
            "cycle_price_usd": format_usd(cycle_nanos),
            "max_session_seconds": settings.demo_max_session_seconds,
        }
    )
