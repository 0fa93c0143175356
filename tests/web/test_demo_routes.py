"""The page's backend without a browser: static files, CSP, the token route, and the switch that turns it off."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest

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


async def test_demo_page_can_be_turned_off(page_gateway: Start) -> None:
    url = (await page_gateway(demo_page=False)).url
    async with aiohttp.ClientSession() as http:
        for method, path in [("GET", "/demo/"), ("GET", "/demo/static/demo.js"), ("POST", "/demo/token")]:
            async with http.request(method, f"{url}{path}") as resp:
                assert resp.status == 404
