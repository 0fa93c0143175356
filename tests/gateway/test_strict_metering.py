"""Strict metering through the gateway and the emulators (docs/billing.md#strict-metering): a format the gateway
cannot read exactly as the provider will is refused with 400 before the provider is contacted; a chunk it cannot
read closes the session with 1008 "unmeterable audio" and never reaches the provider."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.web.services import SERVICES
from tests.gateway.test_billing import el_chunk, ended_session, tone
from tests.support.upgrade import handshake


@pytest.mark.parametrize(
    ("provider", "params"),
    [
        ("assemblyai", "sample_rate=%2B8000"),  # a lenient server reads 8000; was metered as 16000
        ("assemblyai", "sample_rate=+8000"),
        ("assemblyai", "sample_rate=08000"),
        ("assemblyai", "sample_rate=8000&sample_rate=16000"),
        ("assemblyai", "sample_rate="),
        ("assemblyai", "sample_rate=4294975296"),  # 2**32 + 8000
        ("assemblyai", "Sample_Rate=8000"),
        ("assemblyai", "emu_x=1;sample_rate=8000"),
        ("assemblyai", "encoding=PCM_MULAW&sample_rate=8000"),
        ("assemblyai", "encoding=pcm_mulaw&encoding=pcm_s16le"),
        ("assemblyai", "encoding=wav"),
        ("elevenlabs", "sample_rate=48000"),  # the provider ignores it and decodes pcm_16000
        ("elevenlabs", "audio_format=pcm_16000&sample_rate=8000"),
        ("elevenlabs", "audio_format=pcm_8000&audio_format=pcm_48000"),
        ("elevenlabs", "audio_format=PCM_8000"),
        ("elevenlabs", "audio_format=mp3_44100"),
        ("elevenlabs", "encoding=pcm_8000&sample_rate=8000"),  # alias or ignored: 8 kHz or 16 kHz
        ("elevenlabs", "audio_format=pcm_8000&encoding=pcm_16000"),
    ],
)
async def test_a_format_the_gateway_cannot_read_exactly_is_400_before_the_provider(gateway, account, provider, params):
    gw = await gateway()
    acct = await account()
    mark = gw.emulator.recorder.next_seq
    status, body, _ = await handshake(gw.ws_url(gw.stream_query(provider, acct.key, params)))
    assert (status, body["error"]["code"]) == (400, "invalid_audio_format")
    assert gw.emulator.recorder.find(since=mark) == []
    assert (await Admin(gw.app[SERVICES].store, names()).usage(acct.id))["sessions"] == []


@pytest.mark.parametrize(
    ("provider", "params"),
    [
        ("assemblyai", "encoding=pcm_mulaw&sample_rate=8000"),
        ("assemblyai", "sample%5Frate=8000"),  # percent-encoded key: every parser decodes it
        ("elevenlabs", "encoding=pcm_16000&sample_rate=16000"),  # the legacy SDKs' query
        ("elevenlabs", "audio_format=ulaw_8000&sample_rate=8000"),
    ],
)
async def test_formats_read_the_same_by_everyone_are_accepted(gateway, account, provider, params):
    gw = await gateway()
    acct = await account()
    async with gw.connect(provider, acct.key, params) as ws:
        await ws.close()


BAD_CHUNKS = {
    "duplicate sample_rate": '{"message_type":"input_audio_chunk","audio_base_64":"%s","sample_rate":16000,'
    '"sample_rate":4000}',
    "duplicate message_type": '{"message_type":"input_audio_chunk","audio_base_64":"%s","message_type":"x"}',
    "rate not metered": '{"message_type":"input_audio_chunk","audio_base_64":"%s","sample_rate":4000}',
    "rate as a float": '{"message_type":"input_audio_chunk","audio_base_64":"%s","sample_rate":8000.0}',
    "rate as a string": '{"message_type":"input_audio_chunk","audio_base_64":"%s","sample_rate":"8000"}',
    "url-safe base64": '{"message_type":"input_audio_chunk","audio_base_64":"-_%s","sample_rate":16000}',
}


@pytest.mark.parametrize("shape", sorted(BAD_CHUNKS))
async def test_an_unreadable_chunk_closes_1008_and_never_reaches_the_provider(gateway, account, shape):
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    good = el_chunk(tone(3200), 16000)
    bad = BAD_CHUNKS[shape] % base64.b64encode(tone(32_000 * 20)).decode()
    async with gw.connect("elevenlabs", acct.key, "audio_format=pcm_16000", max_msg_size=0) as ws:
        await ws.send_str(good)
        await ws.send_str(bad)
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "unmeterable audio")
    rec = await recorder.wait_for_session(provider="elevenlabs", since=mark)
    await rec.wait_ended()
    assert bad not in rec.texts_in()
    assert rec.texts_in()[0] == good
    assert rec.audio_seconds == pytest.approx(0.1)
    session = (await ended_session(gw, acct.id))["sessions"][0]
    assert (session["audio_seconds"], session["billed_seconds"]) == (0.1, 5)
    assert (session["close_code"], session["closed_by"]) == (1008, "gateway")


async def test_whitespace_inside_base64_is_not_billed(gateway, account):
    """5.000 s of MIME-wrapped base64 (a line break every 76 characters) is one cycle, as the provider decodes it."""
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("elevenlabs", acct.key, "audio_format=pcm_16000") as ws:
        for _ in range(50):
            wrapped = base64.encodebytes(tone(3200)).decode()  # "\n" every 76 characters and at the end
            await ws.send_str(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": wrapped}))
        await ws.close()
    rec = await recorder.wait_for_session(provider="elevenlabs", since=mark)
    await rec.wait_ended()
    assert rec.audio_seconds == pytest.approx(5.0)
    session = (await ended_session(gw, acct.id))["sessions"][0]
    assert (session["audio_seconds"], session["billed_seconds"]) == (5.0, 5)
