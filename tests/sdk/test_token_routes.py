"""The token mints over HTTP on a real socket: the gateway's own shape and each provider's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from sttgate.store import Store
from sttgate.store.tables import tokens as tokens_table
from tests.support.gateway import AccountGateway


@dataclass
class Env:
    url: str
    http: aiohttp.ClientSession
    store: Store
    account_id: str
    key: str


@pytest.fixture
async def env(sdk_gateway: Callable[..., Awaitable[AccountGateway]]) -> AsyncIterator[Env]:
    gw = await sdk_gateway()
    async with aiohttp.ClientSession() as http:
        yield Env(gw.url, http, gw.store, gw.account_id, gw.key)


async def _post(env: Env, headers: dict[str, str], body: Any = None) -> tuple[int, dict[str, Any]]:
    async with env.http.post(f"{env.url}/api/v2/audio-stream/token", headers=headers, json=body) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        return resp.status, await resp.json()


@pytest.mark.parametrize("scheme", ["", "Bearer "])
async def test_mint_generic_token(env: Env, scheme: str) -> None:
    status, body = await _post(env, {"Authorization": scheme + env.key}, {"expires_in_seconds": 30})
    assert status == 200
    assert body["token"].startswith("sttg_") and body["provider"] is None and body["expires_in_seconds"] == 30
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=29) < expires_at - datetime.now(UTC) <= timedelta(seconds=30)
    assert env.key not in body["token"] and env.key[7:15] not in body["token"]
    principal = await env.store.redeem_token(body["token"], "elevenlabs")
    assert principal is not None and principal.account_id == env.account_id


async def test_mint_bound_to_provider_with_default_lifetime(env: Env) -> None:
    status, body = await _post(env, {"Authorization": env.key}, {"provider": "assemblyai"})
    assert status == 200 and body["provider"] == "assemblyai" and body["expires_in_seconds"] == 60
    assert await env.store.redeem_token(body["token"], "elevenlabs") is None
    assert await env.store.redeem_token(body["token"], "assemblyai") is not None


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"expires_in_seconds": 10}, 401, "missing_api_key"),
        ({"Authorization": "Bearer "}, {"expires_in_seconds": 10}, 401, "missing_api_key"),
        ({"Authorization": "sk-mai-" + "x" * 43}, {"expires_in_seconds": 10}, 401, "invalid_api_key"),
        ({"Authorization": "KEY"}, {"expires_in_seconds": 0}, 400, "invalid_request"),
        ({"Authorization": "KEY"}, {"expires_in_seconds": 601}, 400, "invalid_request"),
        ({"Authorization": "KEY"}, {"expires_in_seconds": "ten"}, 400, "invalid_request"),
        ({"Authorization": "KEY"}, {"expires_in_seconds": True}, 400, "invalid_request"),
        ({"Authorization": "KEY"}, {"expires_in_seconds": 1.5}, 400, "invalid_request"),
        ({"Authorization": "KEY"}, [1], 400, "invalid_request"),
        ({"Authorization": "KEY"}, {"provider": "Deepgram"}, 400, "invalid_provider"),
        ({"Authorization": "KEY"}, {"provider": "ElevenLabs"}, 400, "invalid_provider"),
    ],
)
async def test_mint_refusals(env: Env, headers: dict[str, str], body: Any, status: int, code: str) -> None:
    headers = {k: v.replace("KEY", env.key) for k, v in headers.items()}
    got_status, got = await _post(env, headers, body)
    assert (got_status, got["error"]["code"]) == (status, code)
    assert got["error"]["message"]


async def test_a_token_cannot_mint_a_token(env: Env) -> None:
    _, body = await _post(env, {"Authorization": env.key}, {})
    status, refused = await _post(env, {"Authorization": body["token"]}, {})
    assert (status, refused["error"]["code"]) == (401, "invalid_api_key")


async def test_streaming_disabled_account_cannot_mint(env: Env) -> None:
    await env.store.update_account(env.account_id, streaming_enabled=False)
    status, body = await _post(env, {"Authorization": env.key}, {})
    assert (status, body["error"]["code"]) == (403, "streaming_not_enabled")


async def test_revoked_key_cannot_mint(env: Env) -> None:
    keys = await env.store.list_keys(env.account_id)
    await env.store.revoke_key(keys[0].id)
    status, body = await _post(env, {"Authorization": env.key}, {})
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


async def test_elevenlabs_shaped_mint(env: Env) -> None:
    url = f"{env.url}/elevenlabs/v1/single-use-token/realtime_scribe"
    async with env.http.post(url, headers={"xi-api-key": env.key}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {"token"} and body["token"].startswith("sttg_")
    assert await env.store.redeem_token(body["token"], "assemblyai") is None
    assert await env.store.redeem_token(body["token"], "elevenlabs") is not None
    async with env.http.post(url) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_api_key"
    async with env.http.post(url.replace("realtime_scribe", "tts_websocket"), headers={"xi-api-key": env.key}) as resp:
        assert resp.status == 422 and (await resp.json())["error"]["code"] == "invalid_token_type"


async def test_assemblyai_shaped_mint(env: Env) -> None:
    url = f"{env.url}/assemblyai/v3/token"
    params = {"expires_in_seconds": "45", "max_session_duration_seconds": "300"}
    async with env.http.get(url, params=params, headers={"Authorization": env.key}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["expires_in_seconds"] == 45 and body["token"].startswith("sttg_")
    assert await env.store.redeem_token(body["token"], "elevenlabs") is None
    principal = await env.store.redeem_token(body["token"], "assemblyai")
    assert principal is not None and principal.max_session_seconds == 300  # caps the session it opens
    refused = [
        ({}, "invalid_request"),
        ({"expires_in_seconds": "601"}, "invalid_request"),
        ({"expires_in_seconds": "45", "max_session_duration_seconds": "59"}, "invalid_request"),
        ({"expires_in_seconds": "45", "max_session_duration_seconds": "10801"}, "invalid_request"),
        ({"expires_in_seconds": "45", "max_session_duration_seconds": "1.5"}, "invalid_request"),
    ]
    for query, code in refused:
        async with env.http.get(url, params=query, headers={"Authorization": env.key}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    async with env.http.get(url, params=params, headers={"Authorization": "nope"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"


async def test_token_max_seconds_setting_caps_lifetimes(sdk_gateway: Callable[..., Awaitable[AccountGateway]]) -> None:
    gw = await sdk_gateway(token_max_seconds=30)
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": gw.key}
        async with http.post(
            f"{gw.url}/api/v2/audio-stream/token", headers=headers, json={"expires_in_seconds": 31}
        ) as r:
            assert r.status == 400
        async with http.post(
            f"{gw.url}/elevenlabs/v1/single-use-token/realtime_scribe", headers={"xi-api-key": gw.key}
        ) as r:
            assert (await r.json())["token"].startswith("sttg_")
    async with gw.store.engine.connect() as conn:
        row = (await conn.execute(sa.select(tokens_table.c.expires_at, tokens_table.c.created_at))).one()
    assert row.expires_at - row.created_at == timedelta(seconds=30)


async def test_a_token_may_cap_the_session_it_opens(env: Env) -> None:
    status, body = await _post(env, {"Authorization": env.key}, {"max_session_seconds": 90})
    assert status == 200 and body["max_session_seconds"] == 90
    principal = await env.store.redeem_token(body["token"], "assemblyai")
    assert principal is not None and principal.max_session_seconds == 90
    status, body = await _post(env, {"Authorization": env.key}, {})
    assert status == 200 and body["max_session_seconds"] is None
    principal = await env.store.redeem_token(body["token"], "assemblyai")
    assert principal is not None and principal.max_session_seconds is None
    # At most the gateway's own limit (STTGATE_MAX_SESSION_SECONDS, 10800 by default), whole seconds.
    for cap in (0, 10801, 1.5, "60", True):
        status, body = await _post(env, {"Authorization": env.key}, {"max_session_seconds": cap})
        assert (status, body["error"]["code"]) == (400, "invalid_request")


async def test_every_mint_route_records_the_minting_key(env: Env) -> None:
    """The session a token opens is attributed to the key that minted it (docs/contract.md#usage), whichever route
    minted it."""
    [key] = await env.store.list_keys(env.account_id)
    _, generic = await _post(env, {"Authorization": env.key}, {"provider": "assemblyai"})
    async with env.http.post(
        f"{env.url}/elevenlabs/v1/single-use-token/realtime_scribe", headers={"xi-api-key": env.key}
    ) as resp:
        elevenlabs = await resp.json()
    async with env.http.get(
        f"{env.url}/assemblyai/v3/token", params={"expires_in_seconds": "45"}, headers={"Authorization": env.key}
    ) as resp:
        assemblyai = await resp.json()
    for token, provider in (
        (generic["token"], "assemblyai"),
        (elevenlabs["token"], "elevenlabs"),
        (assemblyai["token"], "assemblyai"),
    ):
        principal = await env.store.redeem_token(token, provider)
        assert principal is not None and principal.key_id == key.id, provider
