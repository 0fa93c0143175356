"""Deepgram through the gateway and its emulator: exact bills (docs/billing.md#what-is-metered), refusals before the
provider is contacted, forwarding, the graceful end (``CloseStream`` → ``Metadata``), passed-through closes."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.emulators.deepgram import NET0001
from sttgate.providers import names
from sttgate.web.services import SERVICES
from tests.support.emulator import OPERATOR_KEYS
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

CYCLE = 0.000641667  # 0.462 USD/h × 5 s, rounded half-up to 1e-9


async def ended_session(gw, account_id):
    async def ended():
        usage = await Admin(gw.app[SERVICES].store, names()).usage(account_id)
        return usage if usage["sessions"] and usage["sessions"][0]["ended_at"] else None

    return await wait_for(ended)


def audio(nbytes: int) -> bytes:
    return bytes((i * 37) & 0xFF for i in range(nbytes))


async def stream(gw, key: str, params: str, seconds: float, bytes_per_second: int) -> list[dict]:
    """``seconds`` of audio in 100 ms frames, then ``CloseStream``; the provider's messages until its close."""
    chunk = bytes_per_second // 10
    messages = []
    async with gw.connect("deepgram", key, params) as ws:
        for _ in range(round(seconds * 10)):
            await ws.send_bytes(audio(chunk))
        await ws.send_str('{"type":"CloseStream"}')
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            messages.append(json.loads(msg.data))
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
    return messages


@pytest.mark.parametrize(
    ("params", "bytes_per_second", "audio_seconds", "cycles"),
    [
        ("encoding=linear16&sample_rate=16000", 32000, 12.0, 3),
        ("encoding=linear16&sample_rate=48000&channels=2", 192000, 12.0, 3),  # stereo: one audio
        ("encoding=linear16&sample_rate=16000&channels=2&multichannel=true", 64000, 24.0, 5),  # each channel
        ("encoding=mulaw&sample_rate=8000", 8000, 12.0, 3),
        ("encoding=alaw&sample_rate=8000", 8000, 12.0, 3),
        ("encoding=linear32&sample_rate=16000", 64000, 12.0, 3),
    ],
)
async def test_exact_bills(gateway, account, params, bytes_per_second, audio_seconds, cycles):
    gw = await gateway()
    acct = await account(balance_usd="1")
    messages = await stream(gw, acct.key, params, 12.0, bytes_per_second)
    usage = await ended_session(gw, acct.id)
    session = usage["sessions"][0]
    cost = f"{cycles * CYCLE:.9f}"
    assert (session["provider"], session["audio_seconds"], session["billed_seconds"]) == (
        "deepgram",
        audio_seconds,
        5 * cycles,
    )
    assert session["cost_usd"] == cost and usage["totals"]["deepgram"]["cost_usd"] == cost
    assert usage["balance_usd"] == f"{1 - cycles * CYCLE:.9f}"
    # The provider's own figure: Metadata.duration is the audio timeline; with multichannel=true each channel is billed.
    metadata = messages[-1]
    assert metadata["type"] == "Metadata"
    per_channel = 2 if "multichannel=true" in params else 1
    assert metadata["duration"] * per_channel == session["audio_seconds"]
    # ... and the gateway records it beside its own (docs/billing.md#reconciliation).
    assert session["provider_audio_seconds"] == session["audio_seconds"]
    assert session["provider_session_seconds"] is None


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ("", "unsupported_audio_format"),  # container audio: Deepgram sniffs it, the gateway cannot time it
        ("sample_rate=16000", "unsupported_audio_format"),
        ("encoding=opus&sample_rate=48000", "unsupported_audio_format"),
        ("encoding=flac", "unsupported_audio_format"),
        ("encoding=linear16", "invalid_audio_format"),  # no sample_rate
        ("encoding=linear16&sample_rate=16000&sample_rate=8000", "invalid_audio_format"),
    ],
)
async def test_unmeterable_audio_is_refused_before_the_provider_is_contacted(gateway, account, store, params, code):
    gw = await gateway()
    acct = await account()
    mark = gw.emulator.recorder.next_seq
    status, body, _ = await handshake(gw.ws_url(f"provider=deepgram&api_key={acct.key}&{params}"))
    assert (status, body["error"]["code"]) == (400, code)
    if code == "unsupported_audio_format":
        assert "Deepgram encoding linear16" in body["error"]["message"]
    assert gw.emulator.recorder.find(since=mark) == []
    assert (await Admin(store, names()).usage(acct.id))["sessions"] == []


async def test_forwarding_the_model_default_and_the_operator_credential(gateway, account):
    gw = await gateway()
    acct = await account()
    mark = gw.emulator.recorder.next_seq
    query = "encoding=linear16&sample_rate=16000&keyterm=customer+service&interim_results=True"
    async with gw.connect("deepgram", acct.key, query) as ws:
        assert ws._response.headers["X-Session-Id"]
        await ws.close()
    rec = await gw.emulator.recorder.wait_for_session(provider="deepgram", since=mark)
    assert rec.query_string == query + "&model=nova-3"
    assert rec.header("Authorization") == f"Token {OPERATOR_KEYS['deepgram']}"
    assert acct.key not in rec.query_string and acct.key not in str(rec.headers)


async def test_the_clients_model_is_kept(gateway, account):
    gw = await gateway()
    acct = await account()
    mark = gw.emulator.recorder.next_seq
    # A model the default book prices (docs/billing.md#the-default-book): nova-2 is not priced there, so refused.
    async with gw.connect("deepgram", acct.key, "model=nova-3-general&encoding=mulaw&sample_rate=8000") as ws:
        await ws.close()
    rec = await gw.emulator.recorder.wait_for_session(provider="deepgram", since=mark)
    assert rec.query_string == "model=nova-3-general&encoding=mulaw&sample_rate=8000"


@pytest.mark.parametrize(
    ("provider_status", "status", "code"),
    [(401, 502, "upstream_auth_failed"), (402, 402, "upstream_rejected"), (429, 429, "upstream_rejected")],
)
async def test_deepgrams_handshake_refusals(gateway, account, provider_status, status, code):
    gw = await gateway()
    acct = await account()
    query = f"provider=deepgram&api_key={acct.key}&encoding=linear16&sample_rate=16000"
    got, body, _ = await handshake(gw.ws_url(f"{query}&emu_handshake_status={provider_status}"))
    assert (got, body["error"]["code"]) == (status, code)


async def test_invalid_parameters_are_the_providers_400(gateway, account):
    gw = await gateway()
    acct = await account()
    query = f"provider=deepgram&api_key={acct.key}&encoding=linear16&sample_rate=16000&model=nova-3&keywords=a:2"
    status, body, _ = await handshake(gw.ws_url(query))
    assert (status, body["error"]["code"]) == (400, "upstream_rejected")
    assert "Nova-3" in body["error"]["message"]


async def test_idle_net0001_and_bad_audio_1008_are_passed_through(gateway, account):
    gw = await gateway()
    acct = await account()
    async with gw.connect(
        "deepgram", acct.key, "encoding=linear16&sample_rate=16000&emu_idle_timeout_seconds=0.3"
    ) as ws:
        await ws.send_bytes(audio(3200))
        metadata = await ws.receive_json(timeout=5)
        msg = await ws.receive(timeout=5)
    assert metadata["type"] == "Metadata" and metadata["duration"] == 0.1
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1011, NET0001)
    params = "encoding=linear16&sample_rate=16000&emu_error=data0000&emu_error_after_frames=1"
    async with gw.connect("deepgram", acct.key, params) as ws:
        await ws.send_bytes(audio(3200))
        msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "DATA-0000")


async def test_cut_off_ends_the_provider_session_with_closestream(gateway, account):
    gw = await gateway()
    acct = await account(balance_usd=f"{2 * CYCLE:.9f}")  # exactly two cycles
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("deepgram", acct.key, "encoding=linear16&sample_rate=16000") as ws:

        async def offer_twenty_seconds():
            for _ in range(200):
                await ws.send_bytes(audio(3200))

        sender = asyncio.create_task(offer_twenty_seconds())
        messages = []
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            messages.append(json.loads(msg.data))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "insufficient balance")
    # The provider got CloseStream and answered with its final Results and Metadata before the client's 4002.
    assert messages[-1]["type"] == "Metadata" and messages[-1]["duration"] == 10.0
    rec = await recorder.wait_for_session(provider="deepgram", since=mark)
    await rec.wait_ended()
    assert rec.texts_in()[-1] == '{"type":"CloseStream"}'
    assert (rec.close_code, rec.closed_by) == (1000, "emulator")
    usage = await ended_session(gw, acct.id)
    assert usage["sessions"][0]["billed_seconds"] == 10 and usage["balance_usd"] == "0"
