"""The page's backend without a browser: static files, CSP, the token route and its guards (rate limit per address,
prepaid demo account, session cap), and the switch, off by default."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from sttgate.config import Settings
from sttgate.core.money import cycle_price_nanos
from tests.support.gateway import AccountGateway

Start = Callable[..., Awaitable[AccountGateway]]


async def test_page_and_assets(page_gateway: Start) -> None:
    url = (await page_gateway()).url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/demo") as resp:
            assert resp.status == 200 and str(resp.url).endswith("/demo/")
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            html = await resp.text()
        assert 'src="static/demo.js"' in html and "sk-mai-" not in html
        for name, kind in [("demo.js", "javascript"), ("pcm-worklet.js", "javascript"), ("demo.css", "css")]:
            async with http.get(f"{url}/demo/static/{name}") as resp:
                assert resp.status == 200 and kind in resp.content_type
        async with http.get(f"{url}/demo/static/..%2Ftokens.py") as resp:
            assert resp.status == 404


async def test_demo_token_is_bound_and_priced(page_gateway: Start) -> None:
    gw = await page_gateway(balance_nanos=10**9, rate_elevenlabs="0.39")
    key = gw.settings.demo_api_key.get_secret_value()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/demo/token", json={"provider": "elevenlabs"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert key not in str(body)
        assert body["provider"] == "elevenlabs"
        assert body["rate_usd_per_hour"] == "0.39" and body["cycle_price_usd"] == "0.000541667"
        assert await gw.store.redeem_token(body["token"], "assemblyai") is None
        principal = await gw.store.redeem_token(body["token"], "elevenlabs")
        assert principal is not None and principal.account_id == gw.account_id
        for payload, code in [({}, "invalid_provider"), ({"provider": "x"}, "invalid_provider")]:
            async with http.post(f"{gw.url}/demo/token", json=payload) as resp:
                assert resp.status == 400 and (await resp.json())["error"]["code"] == code


@pytest.mark.parametrize("demo_key", ["", "sk-mai-" + "z" * 43])
async def test_demo_token_without_a_valid_demo_key(page_gateway: Start, demo_key: str) -> None:
    url = (await page_gateway(demo_api_key=demo_key)).url
    async with aiohttp.ClientSession() as http, http.post(f"{url}/demo/token", json={"provider": "assemblyai"}) as r:
        assert r.status == 503 and (await r.json())["error"]["code"] == "demo_not_configured"


def test_the_page_is_off_unless_turned_on() -> None:
    assert Settings.model_fields["demo_page"].default is False


async def test_demo_page_can_be_turned_off(page_gateway: Start) -> None:
    url = (await page_gateway(demo_page=False)).url
    async with aiohttp.ClientSession() as http:
        for method, path in [("GET", "/demo/"), ("GET", "/demo/static/demo.js"), ("POST", "/demo/token")]:
            async with http.request(method, f"{url}{path}") as resp:
                assert resp.status == 404


async def test_a_demo_token_caps_its_session(page_gateway: Start) -> None:
    gw = await page_gateway(demo_max_session_seconds=42)
    async with aiohttp.ClientSession() as http, http.post(f"{gw.url}/demo/token", json={"provider": "deepgram"}) as r:
        body = await r.json()
    assert body["max_session_seconds"] == 42
    principal = await gw.store.redeem_token(body["token"], "deepgram")
    assert principal is not None and principal.max_session_seconds == 42


async def test_a_postpaid_demo_account_is_refused(page_gateway: Start) -> None:
    url = (await page_gateway(balance_nanos=None)).url
    async with aiohttp.ClientSession() as http, http.post(f"{url}/demo/token", json={"provider": "assemblyai"}) as r:
        assert r.status == 503
        error = (await r.json())["error"]
    assert error["code"] == "demo_not_configured" and "prepaid" in error["message"]


async def test_a_spent_demo_balance_is_refused_before_the_page_connects(page_gateway: Start) -> None:
    gw = await page_gateway(balance_nanos=cycle_price_nanos("0.39") - 1, rate_elevenlabs="0.39")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/demo/token", json={"provider": "elevenlabs"}) as resp:
            assert resp.status == 402
            assert (await resp.json())["error"]["code"] == "insufficient_balance"
        await gw.store.update_account(gw.account_id, top_up_nanos=1)  # exactly one cycle: enough
        async with http.post(f"{gw.url}/demo/token", json={"provider": "elevenlabs"}) as resp:
            assert resp.status == 200


async def test_token_minting_is_rate_limited_per_address(page_gateway: Start) -> None:
    gw = await page_gateway(demo_token_burst=2, demo_tokens_per_minute=1)
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.post(f"{gw.url}/demo/token", json={"provider": "assemblyai"}) as resp:
                statuses.append(resp.status)
                body, headers = await resp.json(), resp.headers
        assert statuses == [200, 200, 429]
        assert body == {
            "error": {"code": "rate_limited", "message": "Too many requests from this address; try again in 60 s."}
        }
        assert headers["Retry-After"] == "60" and headers["Cache-Control"] == "no-store"
        # A bad request takes a token too: the limit comes before any parsing or database work.
        async with http.post(f"{gw.url}/demo/token", data=b"not json") as resp:
            assert resp.status == 429


async def test_behind_a_proxy_the_limit_follows_the_address_the_proxy_appended(page_gateway: Start) -> None:
    gw = await page_gateway(demo_token_burst=1, demo_tokens_per_minute=1, demo_client_address_header="X-Forwarded-For")

    async def mint(forwarded_for: str) -> int:
        headers = {"X-Forwarded-For": forwarded_for}
        async with http.post(f"{gw.url}/demo/token", json={"provider": "assemblyai"}, headers=headers) as resp:
            return resp.status

    async with aiohttp.ClientSession() as http:
        assert await mint("203.0.113.7") == 200
        assert await mint("203.0.113.7") == 429
        # What the client wrote before the proxy's own value does not buy it a new bucket.
        assert await mint("198.51.100.1, 203.0.113.7") == 429
        assert await mint("203.0.113.8") == 200
