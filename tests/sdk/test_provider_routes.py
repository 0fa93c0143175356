"""The provider-shaped WebSocket routes (docs/contract.md#drop-in-sdk-routes) and gateway tokens on every push
route (docs/contract.md#tokens)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import aiohttp
import pytest
from yarl import URL

from sttgate.store import auth
from tests.support.gateway import AccountGateway, ended_usage
from tests.support.upgrade import handshake

Start = Callable[..., Awaitable[AccountGateway]]
EL_PATH = "/elevenlabs/v1/speech-to-text/realtime"
AAI_PATH = "/assemblyai/v3/ws"
EL_QUERY = "model_id=scribe_v2_realtime&audio_format=pcm_16000"
AAI_QUERY = "sample_rate=16000&keyterms_prompt=%5B%22a+b%22%5D&format_turns=True"


async def _mint(gw: AccountGateway, provider: str | None = None, seconds: int = 60) -> str:
    return (await gw.store.mint_token(gw.account_id, seconds, provider)).token


@pytest.mark.parametrize(
    ("path", "query", "credential"),
    [
        (EL_PATH, EL_QUERY, "xi-api-key"),
        (AAI_PATH, AAI_QUERY, "Authorization"),
        (AAI_PATH, AAI_QUERY, "Authorization-Bearer"),
    ],
)
async def test_key_in_the_sdk_header(sdk_gateway: Start, path: str, query: str, credential: str) -> None:
    gw = await sdk_gateway()
    header, value = ("Authorization", f"Bearer {gw.key}") if credential.endswith("Bearer") else (credential, gw.key)
    url = URL(f"{gw.url}{path}?{query}&provider=assemblyai", encoded=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers={header: value}) as ws:
        assert ws._response.headers["X-Session-Id"]
        first = json.loads((await ws.receive()).data)
        assert first.get("message_type") == "session_started" or first.get("type") == "Begin"
    rec = gw.recorder.last
    assert rec is not None and rec.provider == ("elevenlabs" if path == EL_PATH else "assemblyai")
    # Forwarded byte for byte; the gateway's own `provider` pair is consumed (the route implies the provider); the
    # price book's default model is added where the client named none (docs/billing.md#the-price-book).
    default = "" if path == EL_PATH else "&speech_model=universal-streaming-english"
    assert rec.query_string == query + default
    assert gw.key not in str(rec.headers)


@pytest.mark.parametrize(("path", "provider"), [(EL_PATH, "elevenlabs"), (AAI_PATH, "assemblyai")])
async def test_token_in_the_query(sdk_gateway: Start, path: str, provider: str) -> None:
    gw = await sdk_gateway()
    token = await _mint(gw, provider)
    status, _, _ = await handshake(f"{gw.url}{path}?token={token}")
    assert status == 101
    rec = gw.recorder.last
    assert rec is not None and token not in rec.query_string and token not in str(rec.headers)
    # Single use.
    status, body, _ = await handshake(f"{gw.url}{path}?token={token}")
    assert (status, body["error"]["code"]) == (401, "invalid_token")


async def test_assemblyai_token_in_the_authorization_header(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    for value in (await _mint(gw), "Bearer " + await _mint(gw)):
        status, _, _ = await handshake(f"{gw.url}{AAI_PATH}?sample_rate=16000", {"Authorization": value})
        assert status == 101


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        (EL_PATH, {}, 401, "missing_api_key"),
        (EL_PATH, {"xi-api-key": "sk-mai-" + "q" * 43}, 401, "invalid_api_key"),
        (EL_PATH, {"Authorization": "KEY"}, 401, "missing_api_key"),  # ElevenLabs' SDK never sends Authorization
        (AAI_PATH, {}, 401, "missing_api_key"),
        (AAI_PATH, {"Authorization": "Bearer "}, 401, "missing_api_key"),
        (AAI_PATH, {"Authorization": "nope"}, 401, "invalid_api_key"),
        (AAI_PATH, {"Authorization": "sttg_unknown"}, 401, "invalid_token"),
        (AAI_PATH, {"xi-api-key": "KEY"}, 401, "missing_api_key"),
    ],
)
async def test_refusals(sdk_gateway: Start, path: str, headers: dict[str, str], status: int, code: str) -> None:
    gw = await sdk_gateway()
    headers = {k: v.replace("KEY", gw.key) for k, v in headers.items()}
    got_status, body, _ = await handshake(f"{gw.url}{path}", headers)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert gw.recorder.last is None  # refused before any upstream connection


async def test_streaming_disabled_and_prepaid_refusals(sdk_gateway: Start) -> None:
    gw = await sdk_gateway(balance_nanos=0)
    status, body, _ = await handshake(f"{gw.url}{AAI_PATH}", {"Authorization": gw.key})
    assert (status, body["error"]["code"]) == (402, "insufficient_balance")
    await gw.store.update_account(gw.account_id, streaming_enabled=False)
    status, body, _ = await handshake(f"{gw.url}{EL_PATH}", {"xi-api-key": gw.key})
    assert (status, body["error"]["code"]) == (403, "streaming_not_enabled")


async def test_token_bound_to_the_other_provider_is_refused_and_kept(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    token = await _mint(gw, "assemblyai")
    status, body, _ = await handshake(f"{gw.url}{EL_PATH}?token={token}")
    assert (status, body["error"]["code"]) == (401, "invalid_token")
    status, _, _ = await handshake(f"{gw.url}{AAI_PATH}?token={token}")
    assert status == 101


async def test_expired_token_is_refused(sdk_gateway: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await sdk_gateway()
    minted = await gw.store.mint_token(gw.account_id, 1)
    monkeypatch.setattr(auth, "utcnow", lambda: minted.expires_at + timedelta(milliseconds=1))
    status, body, _ = await handshake(f"{gw.url}{EL_PATH}?token={minted.token}")
    assert (status, body["error"]["code"]) == (401, "invalid_token")


async def test_token_on_the_generic_route(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    token = await _mint(gw, "elevenlabs")
    status, body, _ = await handshake(f"{gw.url}/ws/v2/audio-stream?provider=assemblyai&token={token}")
    assert (status, body["error"]["code"]) == (401, "invalid_token")
    status, _, _ = await handshake(f"{gw.url}/ws/v2/audio-stream?provider=elevenlabs&token={token}&{EL_QUERY}")
    assert status == 101
    rec = gw.recorder.last
    assert rec is not None and rec.query_string == EL_QUERY


@pytest.mark.parametrize("prefix", [f"{EL_PATH}?", f"{AAI_PATH}?", "/ws/v2/audio-stream?provider=assemblyai&"])
async def test_two_connections_racing_with_one_token(sdk_gateway: Start, prefix: str) -> None:
    """Exactly one connection wins; the other is refused 401 invalid_token, whichever comes first."""
    gw = await sdk_gateway()
    for _ in range(5):
        url = f"{gw.url}{prefix}token={await _mint(gw)}"
        results = await asyncio.gather(handshake(url), handshake(url))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [101, 401]
        assert [body["error"]["code"] for status, body, _ in results if status == 401] == ["invalid_token"]


async def test_a_session_on_a_provider_route_is_billed(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    token = await _mint(gw, "assemblyai")
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gw.url}{AAI_PATH}?token={token}") as ws:
        for _ in range(3):
            await ws.send_bytes(b"\x00\x00" * 1600)
        await ws.send_str('{"type":"Terminate"}')
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "Termination":
                break
    usage = await ended_usage(gw)
    assert usage["totals"]["assemblyai"]["audio_seconds"] == pytest.approx(0.3)
    assert usage["totals"]["assemblyai"]["cost_usd"] == "0.000208333"
