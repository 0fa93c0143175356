"""The LiveSession API that pull tasks and provider-shaped routes build on (see sttgate.gateway.live)."""

from __future__ import annotations

import asyncio
import json

import pytest

from sttgate.admin import Admin
from sttgate.core.refusals import Refusal
from sttgate.providers import get_provider, names
from sttgate.web.services import SERVICES

PCM_100MS = bytes((i * 37) & 0xFF for i in range(3200))  # 16 kHz s16le mono, what the pull feeder produces


async def principal(gw, key):
    return await gw.app[SERVICES].store.authenticate(key)


async def collect(messages) -> list:
    return [m async for m in messages]


@pytest.mark.parametrize("provider_name", ["assemblyai", "elevenlabs", "deepgram"])
async def test_feed_audio_read_messages_finish_and_end(gateway, account, store, provider_name):
    gw = await gateway()
    acct = await account()
    provider = get_provider(provider_name)
    params = {
        "assemblyai": "sample_rate=16000&emu_rate_check=off",
        "elevenlabs": "audio_format=pcm_16000",
        "deepgram": "encoding=linear16&sample_rate=16000",
    }[provider_name]
    live = await gw.app[SERVICES].open_stream(await principal(gw, acct.key), provider, params, kind="pull")
    live.accept()
    try:
        reader = asyncio.create_task(collect(live.messages()))
        for _ in range(60):
            assert await live.send_audio(provider.audio_frame(PCM_100MS))
        await live.finish(code=1000, reason="source ended", closed_by="client")
        messages = await asyncio.wait_for(reader, 5)
    finally:
        await live.end()
    last = json.loads(messages[-1])
    if provider_name == "assemblyai":
        assert last["type"] == "Termination"
    elif provider_name == "deepgram":
        assert last["type"] == "Metadata" and last["duration"] == 6.0
    else:
        assert last["message_type"] == "committed_transcript"
    session = (await Admin(store, names()).usage(acct.id))["sessions"][0]
    assert (session["kind"], session["audio_seconds"], session["billed_seconds"]) == ("pull", 6.0, 10)
    assert (session["close_code"], session["closed_by"]) == (1000, "client")


async def test_send_audio_reports_the_cut_off_and_sends_nothing_unpaid(gateway, account, store):
    gw = await gateway()
    acct = await account(balance_usd="0.000208333")  # one AssemblyAI cycle
    provider = get_provider("assemblyai")
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    live = await gw.app[SERVICES].open_stream(
        await principal(gw, acct.key), provider, "emu_rate_check=off", kind="pull"
    )
    live.accept()
    try:
        sent = 0
        while await live.send_audio(PCM_100MS):
            sent += 1
        assert sent == 50 and live.cut_off
        # Nobody reads the provider's messages here: finish drains them itself.
        await live.finish(code=4002, reason="insufficient balance", closed_by="gateway")
    finally:
        await live.end()
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.audio_bytes == 50 * 3200
    usage = await Admin(store, names()).usage(acct.id)
    assert usage["balance_usd"] == "0"
    assert (usage["sessions"][0]["close_code"], usage["sessions"][0]["closed_by"]) == (4002, "gateway")


async def test_provider_close_ends_messages_and_is_recorded(gateway, account, store):
    gw = await gateway()
    acct = await account()
    provider = get_provider("assemblyai")
    params = "emu_echo=1&emu_close_after_frames=1&emu_close_code=3005&emu_close_reason=cancelled"
    live = await gw.app[SERVICES].open_stream(await principal(gw, acct.key), provider, params, kind="pull")
    live.accept()
    try:
        await live.send_audio(PCM_100MS)
        messages = await asyncio.wait_for(collect(live.messages()), 5)
    finally:
        await live.end()
    assert messages == [PCM_100MS]
    session = (await Admin(store, names()).usage(acct.id))["sessions"][0]
    assert (session["close_code"], session["closed_by"]) == (3005, "upstream")


async def test_gateway_asks_an_idle_session_to_close(gateway, account):
    gw = await gateway(idle_timeout_seconds=0.2)
    acct = await account()
    provider = get_provider("assemblyai")
    live = await gw.app[SERVICES].open_stream(await principal(gw, acct.key), provider, "emu_echo=1", kind="pull")
    try:
        assert await asyncio.wait_for(live.close_requested, 5) == (1008, "idle timeout")
    finally:
        await live.end()


async def test_open_stream_refuses_like_the_handshake(gateway, account):
    gw = await gateway()
    acct = await account(max_streams=0)
    with pytest.raises(Refusal) as refused:
        await gw.app[SERVICES].open_stream(await principal(gw, acct.key), get_provider("assemblyai"), "", kind="pull")
    assert refused.value.code == "too_many_streams"
