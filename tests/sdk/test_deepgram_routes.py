"""Deepgram's drop-in route ``/deepgram/v1/listen`` and token grant ``/deepgram/v1/auth/grant`` (docs/contract.md):
every place its SDK or a browser puts the credential, the subprotocol echo, the grant's shape and refusals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.support.gateway import AccountGateway
from tests.support.upgrade import handshake

Start = Callable[..., Awaitable[AccountGateway]]
PATH = "/deepgram/v1/listen"
QUERY = "model=nova-3&encoding=linear16&sample_rate=16000&keyterm=a+b"


def url(gw: AccountGateway, query: str = QUERY) -> URL:
    return URL(f"{gw.url}{PATH}?{query}", encoded=True)


async def _grant(gw: AccountGateway, headers: dict[str, str], body: Any = None) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.url}/deepgram/v1/auth/grant", headers=headers, json=body) as resp,
    ):
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


@pytest.mark.parametrize("scheme", ["Token", "token", "Bearer", "bearer"])
async def test_key_in_authorization(sdk_gateway: Start, scheme: str) -> None:
    gw = await sdk_gateway()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url(gw), headers={"Authorization": f"{scheme} {gw.key}"}) as ws,
    ):
        assert ws._response.headers["X-Session-Id"] and ws.protocol is None
    rec = gw.recorder.last if gw.recorder else None
    assert rec is not None and rec.provider == "deepgram" and rec.query_string == QUERY
    assert rec.header("Authorization") == "Token emulator-deepgram-key" and gw.key not in str(rec.headers)


@pytest.mark.parametrize("scheme", ["token", "bearer"])
async def test_browser_subprotocols_carry_the_credential_and_are_echoed(sdk_gateway: Start, scheme: str) -> None:
    gw = await sdk_gateway()
    credential = gw.key if scheme == "token" else (await gw.store.mint_token(gw.account_id, 60, "deepgram")).token
    async with aiohttp.ClientSession() as http, http.ws_connect(url(gw), protocols=(scheme, credential)) as ws:
        assert ws.protocol == scheme  # a browser fails the handshake unless one offered protocol is selected
    rec = gw.recorder.last if gw.recorder else None
    assert rec is not None and credential not in str(rec.headers)
    # The provider is not offered the subprotocols: the gateway's own credential is a header.
    assert rec.header("Sec-WebSocket-Protocol") is None


async def test_token_in_the_query_and_refusals(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    token = (await gw.store.mint_token(gw.account_id, 60, "deepgram")).token
    status, _, _ = await handshake(url(gw, f"{QUERY}&token={token}"))
    assert status == 101
    status, body, _ = await handshake(url(gw, f"{QUERY}&token={token}"))  # single use
    assert (status, body["error"]["code"]) == (401, "invalid_token")
    status, body, _ = await handshake(url(gw))
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    status, body, _ = await handshake(url(gw, "model=nova-3"), {"Authorization": f"Token {gw.key}"})  # container
    assert (status, body["error"]["code"]) == (400, "unsupported_audio_format")
    other = (await gw.store.mint_token(gw.account_id, 60, "assemblyai")).token
    status, body, _ = await handshake(url(gw), {"Authorization": f"Bearer {other}"})
    assert (status, body["error"]["code"]) == (401, "invalid_token")


async def test_grant_in_deepgrams_shape(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    status, body = await _grant(gw, {"Authorization": f"Token {gw.key}"})
    assert status == 200 and set(body) == {"access_token", "expires_in"} and body["expires_in"] == 30
    assert body["access_token"].startswith("sttg_")
    status, body = await _grant(gw, {"Authorization": f"token {gw.key}"}, {"ttl_seconds": 90})
    assert (status, body["expires_in"]) == (200, 90)
    status, body = await _grant(gw, {"Authorization": f"Token {gw.key}"}, {"ttl_seconds": 3600})
    assert (status, body["expires_in"]) == (200, 600)  # capped by STTGATE_TOKEN_MAX_SECONDS
    # Bound to deepgram, single use.
    assert await gw.store.redeem_token(body["access_token"], "assemblyai") is None
    assert await gw.store.redeem_token(body["access_token"], "deepgram") is not None
    assert await gw.store.redeem_token(body["access_token"], "deepgram") is None


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, None, 401, "missing_api_key"),
        ({"Authorization": "Token sk-mai-" + "A" * 43}, None, 401, "invalid_api_key"),
        ("key", {"ttl_seconds": 0}, 400, "invalid_request"),
        ("key", {"ttl_seconds": "60"}, 400, "invalid_request"),
        ("key", [1], 400, "invalid_request"),
    ],
)
async def test_grant_refusals(sdk_gateway: Start, headers: Any, body: Any, status: int, code: str) -> None:
    gw = await sdk_gateway()
    if headers == "key":
        headers = {"Authorization": f"Token {gw.key}"}
    got, answer = await _grant(gw, headers, body)
    assert (got, answer["error"]["code"]) == (status, code)


async def test_a_token_cannot_grant_a_token(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    token = (await gw.store.mint_token(gw.account_id, 60, "deepgram")).token
    status, body = await _grant(gw, {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
