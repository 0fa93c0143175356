"""The page's backend without a browser: static files, CSP, the token route, and the switch that turns it off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sttgate import sdk_routes, tokens
from sttgate.config import Settings
from sttgate.store import Store


async def _serve(settings: Settings, store: Store) -> tuple[web.AppRunner, str]:
    app = web.Application()
    sdk_routes.setup(app, settings, lambda: store)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.connect(f"sqlite:///{tmp_path / 'gw.db'}")
    yield s
    await s.close()


async def _demo_key(store: Store, **account: object) -> str:
    created = await store.create_account(name="demo", **account)
    return (await store.create_key(created["id"]))["key"]


async def test_page_and_assets(store: Store) -> None:
    runner, url = await _serve(Settings(demo_api_key=await _demo_key(store)), store)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/demo") as resp:
                assert resp.status == 200 and str(resp.url).endswith("/demo/")
                assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
                html = await resp.text()
            assert 'src="static/demo.js"' in html and "sk-mai-" not in html
            for name, kind in [("demo.js", "javascript"), ("pcm-worklet.js", "javascript"), ("demo.css", "css")]:
                async with http.get(f"{url}/demo/static/{name}") as resp:
                    assert resp.status == 200 and kind in resp.content_type
            async with http.get(f"{url}/demo/static/..%2Fsdk_routes.py") as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()


async def test_demo_token_is_bound_and_priced(store: Store) -> None:
    key = await _demo_key(store, balance_nanos=10**9)
    runner, url = await _serve(Settings(demo_api_key=key, rate_elevenlabs="0.39"), store)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/demo/token", json={"provider": "elevenlabs"}) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert key not in str(body)
            assert body["provider"] == "elevenlabs"
            assert body["rate_usd_per_hour"] == "0.39" and body["cycle_price_usd"] == "0.000541667"
            assert await tokens.redeem(store, body["token"], "assemblyai") is None
            assert await tokens.redeem(store, body["token"], "elevenlabs") is not None
            for payload, code in [({}, "invalid_provider"), ({"provider": "x"}, "invalid_provider")]:
                async with http.post(f"{url}/demo/token", json=payload) as resp:
                    assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("demo_key", ["", "sk-mai-" + "z" * 43])
async def test_demo_token_without_a_valid_demo_key(store: Store, demo_key: str) -> None:
    runner, url = await _serve(Settings(demo_api_key=demo_key), store)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/demo/token", json={"provider": "assemblyai"}) as r,
        ):
            assert r.status == 503 and (await r.json())["error"]["code"] == "demo_not_configured"
    finally:
        await runner.cleanup()


async def test_demo_page_can_be_turned_off(store: Store) -> None:
    runner, url = await _serve(Settings(demo_page=False, demo_api_key=await _demo_key(store)), store)
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in [("GET", "/demo/"), ("GET", "/demo/static/demo.js"), ("POST", "/demo/token")]:
                async with http.request(method, f"{url}{path}") as resp:
                    assert resp.status == 404
    finally:
        await runner.cleanup()
