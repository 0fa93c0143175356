"""The provider session always ends gracefully (docs/contract.md#graceful-provider-end), for every provider, through the
gateway and the emulators: whatever ends a session (the client's close, its lost connection, idle, the time limit, a
drain, a cut-off), the emulator records the provider's end message, and a client that is still there receives the
provider's answer before its close. Idle counts only metered audio (docs/contract.md#idle-and-time-limit).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.emulators.recorder import SessionRecord
from sttgate.providers import get_provider, names
from sttgate.web.services import SERVICES
from tests.support.emulator import provider_names
from tests.support.waiting import wait_for

PCM = bytes((i * 37) & 0xFF for i in range(3200))  # 100 ms of 16 kHz s16le, not silent


def el_chunk(audio: bytes, commit: bool = False) -> str:
    encoded = base64.b64encode(audio).decode()
    return json.dumps({"message_type": "input_audio_chunk", "audio_base_64": encoded, "commit": commit})


# Per provider: connection parameters, 100 ms of audio, a control message that carries no audio.
PARAMS = {
    "assemblyai": "sample_rate=16000&emu_rate_check=off",
    "elevenlabs": "audio_format=pcm_16000",
    "deepgram": "encoding=linear16&sample_rate=16000",
}
AUDIO: dict[str, str | bytes] = {"assemblyai": PCM, "elevenlabs": el_chunk(PCM), "deepgram": PCM}
KEEPALIVE = {"assemblyai": '{"type":"KeepAlive"}', "elevenlabs": el_chunk(b""), "deepgram": '{"type":"KeepAlive"}'}

PROVIDERS = pytest.mark.parametrize("provider", provider_names())


def sent_end_message(rec: SessionRecord) -> bool:
    """Whether the last text frame the provider received is its end message (Terminate, a committing chunk,
    CloseStream)."""
    texts = rec.texts_in()
    return bool(texts) and get_provider(rec.provider).is_end_message(texts[-1])


def is_end_answer(provider: str, message: dict[str, Any]) -> bool:
    """The provider's answer to its end message (what the gateway waits for)."""
    return get_provider(provider).is_end_ack(json.dumps(message), PARAMS[provider])


async def send(ws: aiohttp.ClientWebSocketResponse, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], aiohttp.WSMessage]:
    """The provider's messages the client receives, and the close that follows them."""
    messages = []
    while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
        messages.append(msg.json())
    return messages, msg


def every(seconds: float, ws: aiohttp.ClientWebSocketResponse, frame: str | bytes) -> asyncio.Task[None]:
    """A client that keeps sending ``frame`` (paced, as a live client does) until its socket closes."""

    async def loop() -> None:
        while not ws.closed:
            await send(ws, frame)
            await asyncio.sleep(seconds)

    return asyncio.create_task(loop())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def last_session(gw: Any, account_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        usage = await Admin(gw.app[SERVICES].store, names()).usage(account_id)
        sessions = usage["sessions"]
        return sessions[0] if sessions and sessions[0]["ended_at"] else None

    return await wait_for(ended)


Opened = tuple[aiohttp.ClientWebSocketResponse, SessionRecord]


def opener(gw: Any, provider: str) -> Callable[..., Awaitable[Opened]]:
    """Connect through the gateway and return the socket with the emulator's record of the provider session."""

    async def open_(key: str | None, extra: str = "") -> Opened:
        recorder = gw.emulator.recorder
        mark = recorder.next_seq
        params = "&".join(p for p in (PARAMS[provider], extra) if p)
        ws = await gw.connect(provider, key, params)
        rec = await recorder.wait_for_session(provider=provider, since=mark, accepted=True)
        return ws, rec

    return open_


@PROVIDERS
async def test_client_close(gateway, account, provider):
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account()
    ws, rec = await opener(gw, provider)(acct.key)
    for _ in range(3):
        await send(ws, AUDIO[provider])
    await rec.wait_for_frames_in(3)
    await ws.close(code=1000, message=b"done")
    assert ws.close_code == 1000
    await rec.wait_ended()
    assert sent_end_message(rec) and rec.client_close_code == 1000
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"], session["audio_seconds"]) == (1000, "client", 0.3)


@PROVIDERS
async def test_client_tcp_abort(gateway, account, provider):
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account()
    ws, rec = await opener(gw, provider)(acct.key)
    await send(ws, AUDIO[provider])
    await rec.wait_for_frames_in(1)
    ws._response.connection.transport.abort()
    await rec.wait_ended()
    assert sent_end_message(rec) and rec.client_close_code == 1001  # "client disconnected", after the end
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1006, "client")
    await ws.close()


@PROVIDERS
async def test_a_session_kept_open_only_by_control_messages_closes_at_the_idle_limit_billed_nothing(
    gateway, account, provider
):
    gw = await gateway(idle_timeout_seconds=0.5, finish_timeout_seconds=5)
    acct = await account()
    started = time.monotonic()  # before the handshake: idleness counts from the provider's 101, which precedes ours
    ws, rec = await opener(gw, provider)(acct.key)
    keepalive = every(0.05, ws, KEEPALIVE[provider])
    try:
        messages, close = await until_closed(ws)
    finally:
        await stop(keepalive)
    assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 1008, "idle timeout")
    assert time.monotonic() - started >= 0.5
    assert rec.frames_in_count > 5  # the control messages did reach the provider: they just do not count
    assert is_end_answer(provider, messages[-1])  # the provider's answer reached the client before the close
    await rec.wait_ended()
    assert sent_end_message(rec) and rec.client_close_code == 1008
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1008, "gateway")
    assert (session["audio_seconds"], session["billed_seconds"], session["cost_usd"]) == (0.0, 0, "0")


@PROVIDERS
async def test_audio_keeps_a_session_from_idling(gateway, account, provider):
    gw = await gateway(idle_timeout_seconds=0.5, max_session_seconds=1.5, finish_timeout_seconds=5)
    acct = await account()
    ws, _ = await opener(gw, provider)(acct.key)
    audio = every(0.1, ws, AUDIO[provider])
    try:
        _, close = await until_closed(ws)
    finally:
        await stop(audio)
    # Not idle after 0.5 s: the time limit ended it.
    assert (close.data, close.extra) == (1008, "session time limit")


@PROVIDERS
async def test_session_time_limit_from_the_settings(gateway, account, provider):
    gw = await gateway(max_session_seconds=0.5, finish_timeout_seconds=5)
    acct = await account()
    started = time.monotonic()  # before the handshake: the limit runs from the provider's 101, which precedes ours
    ws, rec = await opener(gw, provider)(acct.key)
    audio = every(0.1, ws, AUDIO[provider])
    try:
        messages, close = await until_closed(ws)
    finally:
        await stop(audio)
    assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 1008, "session time limit")
    assert time.monotonic() - started >= 0.5
    assert is_end_answer(provider, messages[-1])
    await rec.wait_ended()
    assert sent_end_message(rec) and rec.client_close_code == 1008
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1008, "gateway")


@PROVIDERS
async def test_session_time_limit_from_the_token(gateway, account, provider):
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account()
    async with gw.http.post(
        f"{gw.http_url}/api/v2/audio-stream/token",
        json={"provider": provider, "max_session_seconds": 1},
        headers={"Authorization": acct.key},
    ) as resp:
        minted = await resp.json()
    assert resp.status == 200 and minted["max_session_seconds"] == 1
    started = time.monotonic()  # before the handshake: the limit runs from the provider's 101, which precedes ours
    ws, rec = await opener(gw, provider)(None, f"token={minted['token']}")
    audio = every(0.1, ws, AUDIO[provider])
    try:
        _, close = await until_closed(ws)
    finally:
        await stop(audio)
    assert (close.data, close.extra) == (1008, "session time limit")
    assert time.monotonic() - started >= 1.0
    await rec.wait_ended()
    assert sent_end_message(rec)


@PROVIDERS
async def test_drain(gateway, account, provider):
    """What SIGTERM does once the drain period is over (``sttgate serve`` itself: tests/gateway/test_serve.py)."""
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account()
    ws, rec = await opener(gw, provider)(acct.key)
    await send(ws, AUDIO[provider])
    await rec.wait_for_frames_in(1)
    drain = asyncio.create_task(gw.app[SERVICES].sessions.drain(0))
    messages, close = await until_closed(ws)
    await drain
    assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 1012, "service restart")
    assert is_end_answer(provider, messages[-1])
    await rec.wait_ended()
    assert sent_end_message(rec) and rec.client_close_code == 1012
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1012, "gateway")
    await ws.close()


@PROVIDERS
async def test_cut_off(gateway, account, provider):
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account(balance_usd=format_usd(cycle_price_nanos(gw.settings.provider(provider).rate)))
    ws, rec = await opener(gw, provider)(acct.key)
    for _ in range(51):  # the 51st frame would open a second cycle
        await send(ws, AUDIO[provider])
    messages, close = await until_closed(ws)
    assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 4002, "insufficient balance")
    assert is_end_answer(provider, messages[-1])
    await rec.wait_ended()
    assert sent_end_message(rec) and rec.client_close_code == 1000
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["billed_seconds"]) == (4002, 5)
    await ws.close()


async def test_a_client_that_sent_terminate_itself_gets_no_second_one(gateway, account):
    """The client's own end message counts: the gateway only waits for the provider's end."""
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account()
    ws, rec = await opener(gw, "assemblyai")(acct.key)
    await ws.send_bytes(PCM)
    await ws.send_str('{"type":"Terminate"}')
    await ws.close()
    await rec.wait_ended()
    assert rec.texts_in() == ['{"type":"Terminate"}']


async def test_an_elevenlabs_client_that_committed_last_gets_no_second_commit(gateway, account):
    """A second commit with nothing uncommitted would be answered ``commit_throttled``, an error the client did not
    cause: after a client's committing chunk the gateway sends none."""
    gw = await gateway(finish_timeout_seconds=5)
    acct = await account()
    ws, rec = await opener(gw, "elevenlabs")(acct.key)
    for _ in range(5):
        await ws.send_str(el_chunk(PCM))
    await ws.send_str(el_chunk(b"", commit=True))
    while (await ws.receive_json(timeout=5))["message_type"] != "committed_transcript":
        pass
    await ws.close()
    await rec.wait_ended()
    assert [json.loads(t)["commit"] for t in rec.texts_in()] == [False] * 5 + [True]
    assert "commit_throttled" not in {m["message_type"] for m in rec.json_out()}
