"""Closing a live session through the admin API (docs/admin-api.md#close-a-session): the request is recorded in the
database and the gateway running the session, whichever it is, ends it with 1008 "closed by operator", the provider
session first ended gracefully (its end message, its answer relayed to the client).

The two-gateway test runs gateway A as a real ``sttgate serve`` process and gateway B in this process with the admin
API mounted, both on one fresh PostgreSQL schema (skipped with the reason when PostgreSQL is unreachable).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from yarl import URL

from sttgate.providers import get_provider
from sttgate.store import Store
from tests.support.accounts import create_account
from tests.support.admin_api import AdminApi, running_admin_api
from tests.support.emulator import EmulatorServer
from tests.support.gateway import gateway_settings
from tests.support.postgres import fresh_schema
from tests.support.serve import serve_env, serve_processes
from tests.support.waiting import wait_for

FRAME = b"\x00" * 3200  # 100 ms of pcm_s16le at 16 kHz
QUERY = "provider=assemblyai&sample_rate=16000&emu_rate_check=off"


@pytest.fixture
async def pg() -> AsyncIterator[str]:
    async with fresh_schema("sttgate_opclose") as url:
        store = await Store.connect(url, migrate=True)
        await store.close()
        yield url


async def audio_until_closed(ws: aiohttp.ClientWebSocketResponse) -> asyncio.Task[None]:
    """A live client: 100 ms of audio every 100 ms until its socket closes."""

    async def loop() -> None:
        while not ws.closed:
            try:
                await ws.send_bytes(FRAME)
            except ConnectionError:
                return
            await asyncio.sleep(0.1)

    return asyncio.create_task(loop())


async def live_session(api: AdminApi, account_id: str) -> dict[str, Any]:
    async def listed() -> dict[str, Any] | None:
        status, page = await api.call("GET", "/sessions", params={"live": "true", "account_id": account_id})
        assert status == 200, page
        return page["data"][0] if page["data"] else None

    return await wait_for(listed, 15, 0.05, "the session listed live")


async def close_through(api: AdminApi, ws: aiohttp.ClientWebSocketResponse, session_id: str) -> tuple[Any, float]:
    """POST the close to ``api``; the client's messages, its close frame and the seconds from the POST to it."""
    messages: list[dict[str, Any]] = []
    started = time.monotonic()
    status, answer = await api.call("POST", f"/sessions/{session_id}/close")
    assert status == 202, answer
    assert answer["id"] == session_id and answer["close_requested_at"] is not None
    while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
        messages.append(json.loads(msg.data))
    return (messages, msg), time.monotonic() - started


async def test_a_session_on_gateway_a_is_closed_through_the_api_of_gateway_b(
    pg: str, emulator: EmulatorServer, tmp_path: Path
) -> None:
    store = await Store.connect(pg, migrate=False)
    try:
        customer = await create_account(store, name="operator-close", balance_nanos=10**9)
        async with serve_processes() as spawn:
            a = await spawn(env=serve_env(emulator, pg, "gateway-a"), cwd=tmp_path, name="a")
            settings = gateway_settings(emulator, database_url=pg, gateway_id="gateway-b")
            async with running_admin_api(settings, store) as b, aiohttp.ClientSession() as http:
                mark = emulator.recorder.next_seq
                ws = await http.ws_connect(a.ws_url(f"{QUERY}&api_key={customer.key}"), max_msg_size=0)
                audio = await audio_until_closed(ws)
                try:
                    session = await live_session(b, customer.id)
                    assert session["id"] == ws._response.headers["X-Session-Id"]
                    assert session["gateway_id"].startswith("gateway-a#") and session["live"]  # A, this start of it
                    (messages, close), seconds = await close_through(b, ws, session["id"])
                finally:
                    audio.cancel()
                    await asyncio.gather(audio, return_exceptions=True)
                    await ws.close()
                print(f"closed through gateway B, ended on gateway A: {seconds:.3f} s from the POST to the close")

                assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 1008, "closed by operator")
                # Graceful: the provider got its end message, and its answer reached the client before the close.
                provider = get_provider("assemblyai")
                assert provider is not None
                assert messages and provider.is_end_ack(json.dumps(messages[-1]), "sample_rate=16000")
                rec = next(r for r in emulator.recorder.find(provider="assemblyai") if r.seq >= mark)
                await rec.wait_ended(10)
                assert provider.is_end_message(rec.texts_in()[-1])
                assert rec.client_close_code == 1008

                async def ended() -> dict[str, Any] | None:
                    status, shown = await b.call("GET", f"/sessions/{session['id']}")
                    assert status == 200
                    return shown if shown["ended_at"] is not None else None

                shown = await wait_for(ended, 10, 0.05, "the session's end written")
                assert (shown["close_code"], shown["closed_by"], shown["live"]) == (1008, "gateway", False)
                status, body = await b.call("POST", f"/sessions/{session['id']}/close")
                assert status == 409 and body["error"]["code"] == "conflict"
                status, page = await b.call("GET", "/sessions", params={"live": "true"})
                assert (status, page["data"]) == (200, [])
            assert a.proc.returncode is None  # gateway A kept running
    finally:
        await store.close()


async def test_a_session_closed_through_its_own_gateways_api(store: Store, emulator: EmulatorServer) -> None:
    """SQLite, one gateway: the same path (the request in the database, the manager's poll)."""
    customer = await create_account(store, name="operator-close")
    settings = gateway_settings(emulator, gateway_id="only")
    async with running_admin_api(settings, store) as api:
        query = URL(f"{api.running.http_url}/ws/v2/audio-stream?{QUERY}&api_key={customer.key}", encoded=True)
        ws = await api.http.ws_connect(query, max_msg_size=0)
        audio = await audio_until_closed(ws)
        try:
            session = await live_session(api, customer.id)
            (_, close), seconds = await close_through(api, ws, session["id"])
        finally:
            audio.cancel()
            await asyncio.gather(audio, return_exceptions=True)
            await ws.close()
        print(f"closed through the same gateway: {seconds:.3f} s from the POST to the close")
        assert (close.data, close.extra) == (1008, "closed by operator")
