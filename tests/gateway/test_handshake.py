"""The push handshake (docs/contract.md#refusals): every refusal is an HTTP status with a JSON body before any upgrade;
the 101 follows the provider's own 101 and carries X-Session-Id."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from sqlalchemy import select

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.store.tables import sessions
from sttgate.web.services import SERVICES
from tests.support.emulator import OPERATOR_KEYS
from tests.support.gateway import gateway_settings
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

UNKNOWN_KEY = "sk-mai-" + "A" * 43


def error(body: dict) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["message"]


async def test_missing_key_is_401(gateway):
    gw = await gateway()
    status, body, _ = await handshake(gw.ws_url("provider=assemblyai"))
    assert status == 401
    assert error(body)[0] == "missing_api_key"


async def test_unknown_key_is_401(gateway):
    gw = await gateway()
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={UNKNOWN_KEY}"))
    assert (status, error(body)[0]) == (401, "invalid_api_key")
    status, body, _ = await handshake(gw.ws_url("provider=assemblyai&api_key=not-a-key"))
    assert (status, error(body)[0]) == (401, "invalid_api_key")


async def test_revoked_key_is_401(gateway, account, store):
    gw = await gateway()
    acct = await account()
    keys = await store.list_keys(acct.id)
    await store.revoke_key(keys[0].id)
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}"))
    assert (status, error(body)[0]) == (401, "invalid_api_key")


async def test_streaming_disabled_is_403_and_checked_before_provider(gateway, account):
    gw = await gateway()
    acct = await account(streaming_enabled=False)
    status, body, _ = await handshake(gw.ws_url(f"api_key={acct.key}"))
    assert (status, error(body)[0]) == (403, "streaming_not_enabled")


async def test_missing_and_invalid_provider_are_400_listing_valid_ones(gateway, account):
    gw = await gateway()
    acct = await account()
    status, body, _ = await handshake(gw.ws_url(f"api_key={acct.key}"))
    assert (status, error(body)[0]) == (400, "missing_provider")
    for name in ("AssemblyAI", "Deepgram", "openai", ""):
        status, body, _ = await handshake(gw.ws_url(f"provider={name}&api_key={acct.key}"))
        assert status == 400
        code, message = error(body)
        assert code == ("missing_provider" if name == "" else "invalid_provider")
        assert "elevenlabs" in message and "assemblyai" in message and "deepgram" in message


async def test_key_is_checked_before_provider(gateway):
    gw = await gateway()
    status, body, _ = await handshake(gw.ws_url("provider=nope"))
    assert (status, error(body)[0]) == (401, "missing_api_key")


async def test_too_many_streams_is_429(gateway, account):
    gw = await gateway()
    acct = await account(max_streams=1)
    async with gw.connect("assemblyai", acct.key, "emu_echo=1"):
        status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_echo=1"))
        assert (status, error(body)[0]) == (429, "too_many_streams")


async def test_balance_below_one_cycle_is_402(gateway, account):
    gw = await gateway()
    # One AssemblyAI cycle costs 0.000208333 USD.
    acct = await account(balance_usd="0.000208332")
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}"))
    assert (status, error(body)[0]) == (402, "insufficient_balance")
    exact = await account(balance_usd="0.000208333")
    async with gw.connect("assemblyai", exact.key, "emu_echo=1") as ws:
        assert not ws.closed


async def test_provider_4xx_is_kept_and_quoted(gateway, account):
    gw = await gateway()
    acct = await account()
    status, body, _ = await handshake(
        gw.ws_url(
            f"provider=assemblyai&api_key={acct.key}&emu_handshake_status=422&emu_error_message=sample_rate+is+bad"
        )
    )
    assert status == 422
    code, message = error(body)
    assert code == "upstream_rejected"
    assert "sample_rate is bad" in message and "422" in message


@pytest.mark.parametrize("provider_status", [401, 403])
async def test_provider_auth_refusal_is_502_upstream_auth_failed(gateway, account, provider_status):
    gw = await gateway()
    acct = await account()
    status, body, _ = await handshake(
        gw.ws_url(f"provider=elevenlabs&api_key={acct.key}&emu_handshake_status={provider_status}")
    )
    assert (status, error(body)[0]) == (502, "upstream_auth_failed")


async def test_provider_5xx_is_502_upstream_unavailable(gateway, account):
    gw = await gateway()
    acct = await account()
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_handshake_status=503"))
    assert (status, error(body)[0]) == (502, "upstream_unavailable")


async def test_unreachable_provider_is_502_upstream_unavailable(gateway, account, unused_tcp_port):
    gw = await gateway(assemblyai_url=f"ws://127.0.0.1:{unused_tcp_port}/v3/ws")
    acct = await account()
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}"))
    assert (status, error(body)[0]) == (502, "upstream_unavailable")


async def test_slow_provider_handshake_is_504(gateway, account):
    gw = await gateway(upstream_connect_timeout_seconds=0.2)
    acct = await account()
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_handshake_delay_ms=1000"))
    assert (status, error(body)[0]) == (504, "upstream_timeout")


async def test_failed_upstream_frees_the_slot_costs_nothing_and_is_no_session(gateway, account, store):
    """docs/contract.md#usage: a handshake refused after the slot was taken is not a session."""
    gw = await gateway()
    acct = await account(max_streams=1, balance_usd="1")
    status, _, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_handshake_status=500"))
    assert status == 502
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        assert not ws.closed
        accepted = ws._response.headers["X-Session-Id"]
    usage = await wait_for(lambda: _ended_usage(gw, acct.id))
    assert [s["id"] for s in usage["sessions"]] == [accepted]
    assert usage["totals"]["assemblyai"]["sessions"] == 1
    assert usage["balance_usd"] == "1.000000000"


async def test_client_gone_before_its_101_frees_the_slot_and_is_no_session(gateway, account, store):
    gw = await gateway()
    acct = await account(max_streams=1)
    url = gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_echo=1&emu_handshake_delay_ms=300")
    # The client gives up while the gateway waits for the provider's 101.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await handshake(url)
    await asyncio.sleep(0.5)  # the provider's 101 has come; the client's 101 has nowhere to go
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:  # the slot is free again
        accepted = ws._response.headers["X-Session-Id"]
    usage = await wait_for(lambda: _ended_usage(gw, acct.id))
    assert [s["id"] for s in usage["sessions"]] == [accepted]
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(sessions.c.id, sessions.c.opening, sessions.c.ended_at))).all()
    [gone] = [r for r in rows if r.id != accepted]  # its slot was taken, and freed: never a session
    assert gone.opening and gone.ended_at is not None


@pytest.mark.parametrize("how", ["query", "raw_header", "bearer_header"])
async def test_key_from_query_or_authorization_header(gateway, account, how):
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    query, headers = "provider=assemblyai&emu_echo=1", {}
    if how == "query":
        query += f"&api_key={acct.key}"
    elif how == "raw_header":
        headers["Authorization"] = acct.key
    else:
        headers["Authorization"] = f"Bearer {acct.key}"
    async with gw.http.ws_connect(gw.ws_url(query), headers=headers) as ws:
        session_id = ws._response.headers["X-Session-Id"]
        await ws.send_bytes(b"\x00" * 3200)
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    assert rec.header("Authorization") == OPERATOR_KEYS["assemblyai"]
    assert acct.key not in rec.query_string
    usage = await wait_for(lambda: _ended_usage(gw, acct.id))
    assert usage["sessions"][0]["id"] == session_id


async def _ended_usage(gw, account_id):
    from sttgate.web.services import SERVICES

    usage = await Admin(gw.app[SERVICES].store, names()).usage(account_id)
    return usage if usage["sessions"] and usage["sessions"][0]["ended_at"] else None


async def test_upgrade_does_not_wait_for_the_providers_first_message(gateway, account):
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    # The emulator sends Begin half a second after its 101: the client's 101 must not wait for it.
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_start_delay_ms=500") as ws:
        rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
        assert rec.accepted and rec.id is None  # upgraded, and Begin not sent yet
        begin = await ws.receive_json(timeout=5)
        assert begin["type"] == "Begin" and begin["id"] == rec.id


async def test_twelve_simultaneous_handshakes_against_three_slots(gateway, account):
    gw = await gateway()
    acct = await account(max_streams=3)

    async def attempt():
        try:
            return await gw.http.ws_connect(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_echo=1"))
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status

    results = await asyncio.gather(*(attempt() for _ in range(12)))
    sockets = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
    assert len(sockets) == 3
    assert sorted(r for r in results if isinstance(r, int)) == [429] * 9
    # A freed slot is reusable at once: the gateway ends the session before the client sees its close.
    await sockets[0].close()
    again = await gw.http.ws_connect(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&emu_echo=1"))
    for ws in (again, *sockets[1:]):
        await ws.close()


async def test_not_an_upgrade_is_refused_without_taking_a_slot(gateway, account, store):
    gw = await gateway()
    acct = await account()
    async with gw.http.get(gw.ws_url(f"provider=assemblyai&api_key={acct.key}")) as resp:
        assert resp.status == 426
        assert (await resp.json())["error"]["code"] == "websocket_upgrade_required"
    assert (await Admin(store, names()).usage(acct.id))["sessions"] == []


def test_settings_fixture_points_at_the_emulator(emulator):
    settings = gateway_settings(emulator)
    assert settings.assemblyai_url.endswith("/v3/ws")


async def test_audio_the_gateway_cannot_meter_is_refused(gateway, account, store):
    gw = await gateway()
    acct = await account()
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}&encoding=opus"))
    assert (status, error(body)[0]) == (400, "unsupported_audio_format")
    assert (await Admin(store, names()).usage(acct.id))["sessions"] == []


async def test_single_use_token_in_the_query(gateway, account, store):
    gw = await gateway()
    acct = await account()
    minted = await store.mint_token(acct.id, 60, provider="assemblyai")
    # A request that would be refused for its provider does not spend the token.
    status, body, _ = await handshake(gw.ws_url(f"token={minted.token}"))
    assert (status, error(body)[0]) == (400, "missing_provider")
    async with gw.http.ws_connect(gw.ws_url(f"provider=assemblyai&token={minted.token}&emu_echo=1")) as ws:
        assert ws._response.headers["X-Session-Id"]
    status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&token={minted.token}&emu_echo=1"))
    assert (status, error(body)[0]) == (401, "invalid_token")
    status, body, _ = await handshake(gw.ws_url("provider=assemblyai&token=sttg_unknown"))
    assert (status, error(body)[0]) == (401, "invalid_token")


async def test_a_process_at_its_admission_limit_answers_503_until_a_session_ends(gateway, account):
    """Admission control (docs/operations.md#running): at ``STTGATE_MAX_SESSIONS_PER_PROCESS`` live sessions a process
    refuses the next handshake with 503 ``gateway_overloaded`` before any provider is contacted; once one ends, the
    next is admitted."""
    gw = await gateway(max_sessions_per_process=1)
    acct = await account(max_streams=5)
    mark = gw.emulator.recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        await ws.send_bytes(b"\x00" * 320)
        assert (await ws.receive(timeout=5)).data == b"\x00" * 320
        status, body, _ = await handshake(gw.ws_url(f"provider=assemblyai&api_key={acct.key}"))
        assert (status, error(body)[0]) == (503, "gateway_overloaded")
        assert len(gw.emulator.recorder.find(since=mark)) == 1  # the refused one never reached the provider
    await wait_for(lambda: not gw.app[SERVICES].sessions.live, what="the first session ended")
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        await ws.send_bytes(b"\x00" * 320)
        assert (await ws.receive(timeout=5)).data == b"\x00" * 320
