"""docs/billing.md through the gateway and the emulators: exact bills, prepaid debits, the cut-off, durability."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.web.services import SERVICES
from tests.support.waiting import wait_for


async def ended_session(gw, account_id):
    async def ended():
        usage = await Admin(gw.app[SERVICES].store, names()).usage(account_id)
        return usage if usage["sessions"] and usage["sessions"][0]["ended_at"] else None

    return await wait_for(ended)


def tone(nbytes: int) -> bytes:
    """Non-silent audio bytes (content does not matter for billing; the emulator transcribes voiced audio)."""
    return bytes((i * 37) & 0xFF for i in range(nbytes))


async def stream_assemblyai(gw, key, params, seconds, bytes_per_second):
    chunk = bytes_per_second // 10  # 100 ms
    async with gw.connect("assemblyai", key, params + "&emu_rate_check=off") as ws:
        for _ in range(round(seconds * 10)):
            await ws.send_bytes(tone(chunk))
        await ws.send_str('{"type":"Terminate"}')
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)


def el_chunk(audio: bytes, sample_rate: int | None = None, commit: bool = False) -> str:
    message = {"message_type": "input_audio_chunk", "audio_base_64": base64.b64encode(audio).decode(), "commit": commit}
    if sample_rate is not None:
        message["sample_rate"] = sample_rate
    return json.dumps(message)


async def stream_elevenlabs(gw, key, params, seconds, bytes_per_second, chunk_rate=None):
    chunk = bytes_per_second // 10
    async with gw.connect("elevenlabs", key, params) as ws:
        for _ in range(round(seconds * 10)):
            await ws.send_str(el_chunk(tone(chunk), chunk_rate))
        await ws.close(code=1000, message=b"User ended conversation")


@pytest.mark.parametrize(
    ("params", "bytes_per_second"),
    [
        ("sample_rate=16000", 32000),
        ("encoding=pcm_s16le&sample_rate=16000", 32000),
        ("encoding=pcm_mulaw&sample_rate=8000", 8000),
    ],
)
async def test_assemblyai_twelve_seconds_is_three_cycles(gateway, account, params, bytes_per_second):
    gw = await gateway()
    acct = await account()
    await stream_assemblyai(gw, acct.key, params, 12.0, bytes_per_second)
    usage = await ended_session(gw, acct.id)
    session = usage["sessions"][0]
    assert (session["audio_seconds"], session["billed_seconds"], session["cost_usd"]) == (12.0, 15, "0.000624999")
    assert usage["totals"]["assemblyai"]["cost_usd"] == "0.000624999"
    assert usage["balance_usd"] is None
    # The provider's own Termination figures, recorded beside the gateway's (docs/billing.md#reconciliation).
    assert session["provider_audio_seconds"] == 12.0 and session["provider_session_seconds"] is not None


@pytest.mark.parametrize(("seconds", "cycles"), [(10.0, 2), (10.1, 3), (0.1, 1)])
async def test_a_cycle_opens_when_audio_first_exceeds_it(gateway, account, seconds, cycles):
    gw = await gateway()
    acct = await account(balance_usd="1")
    await stream_assemblyai(gw, acct.key, "sample_rate=16000", seconds, 32000)
    usage = await ended_session(gw, acct.id)
    assert usage["sessions"][0]["billed_seconds"] == 5 * cycles
    assert usage["balance_usd"] == f"{1 - cycles * 0.000208333:.9f}"


@pytest.mark.parametrize(
    ("params", "bytes_per_second", "chunk_rate"),
    [
        ("audio_format=pcm_16000", 32000, None),
        ("", 32000, None),  # the default format is pcm_16000
        ("audio_format=pcm_44100", 88200, None),
        ("audio_format=ulaw_8000", 8000, None),
        ("audio_format=pcm_16000", 16000, 8000),  # each chunk declares 8 kHz: 12 s, not 6 s
    ],
)
async def test_elevenlabs_twelve_seconds_is_three_cycles(gateway, account, params, bytes_per_second, chunk_rate):
    gw = await gateway()
    acct = await account()
    await stream_elevenlabs(gw, acct.key, params, 12.0, bytes_per_second, chunk_rate)
    session = (await ended_session(gw, acct.id))["sessions"][0]
    assert session["provider_audio_seconds"] is None  # ElevenLabs reports nothing at the end
    assert (session["audio_seconds"], session["billed_seconds"], session["cost_usd"]) == (12.0, 15, "0.001625001")


async def test_session_without_audio_costs_nothing(gateway, account):
    gw = await gateway()
    acct = await account(balance_usd="0.5")
    async with gw.connect("elevenlabs", acct.key) as ws:
        await ws.send_str('{"message_type":"not_audio"}')
    usage = await ended_session(gw, acct.id)
    session = usage["sessions"][0]
    assert (session["audio_seconds"], session["billed_seconds"], session["cost_usd"]) == (0.0, 0, "0")
    assert usage["balance_usd"] == "0.500000000"


async def test_cut_off_when_the_balance_cannot_pay_the_next_cycle(gateway, account):
    gw = await gateway()
    acct = await account(balance_usd="0.000416666")  # exactly two AssemblyAI cycles
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    chunk = tone(3200)  # 100 ms at 16 kHz
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:

        async def offer_twenty_seconds():
            for _ in range(200):
                await ws.send_bytes(chunk)

        sender = asyncio.create_task(offer_twenty_seconds())
        messages = []
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            messages.append(msg.json())
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "insufficient balance")
    # The provider session was ended gracefully: its final messages reached the client before the 4002.
    assert messages[-1]["type"] == "Termination"
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.audio_bytes == 10 * 32000
    assert rec.client_close_code == 1000
    usage = await ended_session(gw, acct.id)
    session = usage["sessions"][0]
    assert usage["balance_usd"] == "0"
    assert (session["audio_seconds"], session["billed_seconds"], session["cost_usd"]) == (10.0, 10, "0.000416666")
    assert (session["close_code"], session["closed_by"]) == (4002, "gateway")


async def test_elevenlabs_cut_off_commits_and_closes_the_provider(gateway, account):
    gw = await gateway()
    acct = await account(balance_usd="0.000541667")  # one ElevenLabs cycle
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("elevenlabs", acct.key, "audio_format=pcm_16000") as ws:
        for _ in range(51):  # 5.1 s: the 51st chunk would open cycle 2
            await ws.send_str(el_chunk(tone(3200)))
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.data, msg.extra) == (4002, "insufficient balance")
    rec = await recorder.wait_for_session(provider="elevenlabs", since=mark)
    await rec.wait_ended()
    assert rec.audio_seconds == pytest.approx(5.0)
    assert json.loads(rec.texts_in()[-1])["commit"] is True
    assert rec.client_close_code == 1000
    usage = await ended_session(gw, acct.id)
    assert usage["balance_usd"] == "0"
    assert usage["sessions"][0]["billed_seconds"] == 5


async def test_charged_cycles_are_on_disk_while_the_session_runs(gateway, account, store):
    gw = await gateway(ledger_flush_seconds=0.1, ledger_progress_seconds=0.2)
    prepaid = await account(balance_usd="1")
    postpaid = await account()
    for acct in (prepaid, postpaid):
        async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
            for _ in range(60):  # 6 s: two cycles
                await ws.send_bytes(tone(3200))

            async def written(account_id=acct.id):
                # A session is listed from the ledger tick after its 101 (or its first charge): docs/contract.md#usage.
                sessions = (await Admin(store, names()).usage(account_id))["sessions"]
                return bool(sessions) and sessions[0]["billed_seconds"] == 10 and sessions[0]["audio_seconds"] == 6.0

            await wait_for(written, timeout=1.0)
            assert (await Admin(store, names()).usage(acct.id))["sessions"][0]["ended_at"] is None
    assert (await Admin(store, names()).usage(prepaid.id))["balance_usd"] == "0.999583334"


async def test_a_postpaid_account_switched_to_prepaid_with_no_balance_stops_within_a_cycle(gateway, account, store):
    """docs/billing.md#account-changes: the next cycle is charged, cannot be paid: 4002, and no unpaid audio."""
    gw = await gateway(account_refresh_seconds=0.1)
    acct = await account()  # postpaid
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        for _ in range(20):  # 2 s: cycle 1, accrued
            await ws.send_bytes(tone(3200))
        await store.update_account(acct.id, set_balance_nanos=0)
        sessions = gw.app[SERVICES].sessions

        async def rebilled() -> bool:
            return all(live.billing.prepaid for live in sessions.live.values())

        await wait_for(rebilled, timeout=5.0)
        for _ in range(30):  # to 5 s: still cycle 1
            await ws.send_bytes(tone(3200))
        await ws.send_bytes(tone(3200))  # opens cycle 2, which a balance of 0 cannot pay
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "insufficient balance")
    session = (await ended_session(gw, acct.id))["sessions"][0]
    assert (session["audio_seconds"], session["billed_seconds"]) == (5.0, 5)
    assert (await Admin(store, names()).usage(acct.id))["balance_usd"] == "0"


async def test_withdrawn_streaming_permission_closes_live_sessions_1008(gateway, account, store):
    gw = await gateway(account_refresh_seconds=0.1)
    acct = await account()
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        await ws.send_bytes(tone(3200))
        await store.update_account(acct.id, streaming_enabled=False)
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "streaming disabled")
    session = (await ended_session(gw, acct.id))["sessions"][0]
    assert (session["close_code"], session["closed_by"]) == (1008, "gateway")


async def test_a_failing_charge_relays_no_unpaid_audio(gateway, account, store, monkeypatch):
    """The database fails: the first cycle, paid by the handshake's hold (docs/billing.md#holds), is relayed (its
    write fails in the background, losing nothing); the second, which nothing paid, is not, and the client gets 1011.
    The end bills the first cycle from the hold."""
    gw = await gateway()
    acct = await account(balance_usd="1")
    recorder = gw.emulator.recorder
    mark = recorder.next_seq

    async def database_down(*args, **kwargs):
        raise ConnectionError("database unavailable")

    monkeypatch.setattr(store, "settle_cycles", database_down)  # a frame's charge
    monkeypatch.setattr(store, "settle_cycles_batch", database_down)  # the background writes
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        for _ in range(51):  # 5 s (cycle 1, held), then the frame that opens cycle 2
            await ws.send_bytes(tone(3200))
        while (msg := await ws.receive(timeout=10)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1011, "billing unavailable")
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.audio_bytes == 50 * 3200 and rec.binary_frames_in == 50
    usage = await ended_session(gw, acct.id)
    assert usage["balance_usd"] == "0.999791667"  # one cycle (0.000208333), the hold's
    session = usage["sessions"][0]
    assert (session["close_code"], session["closed_by"], session["cost_usd"]) == (1011, "gateway", "0.000208333")


@pytest.mark.parametrize("prepaid", [False, True])
async def test_metering_disabled_bills_nothing(gateway, account, prepaid):
    """Benchmarking only (``metering_enabled=false``): the audio is relayed, nothing is metered, charged or billed."""
    gw = await gateway(metering_enabled=False)
    acct = await account(balance_usd="1" if prepaid else None)
    await stream_assemblyai(gw, acct.key, "sample_rate=16000", 12.0, 32000)
    usage = await ended_session(gw, acct.id)
    session = usage["sessions"][0]
    assert (session["audio_seconds"], session["billed_seconds"], session["cost_usd"]) == (0.0, 0, "0")
    assert usage["balance_usd"] == ("1.000000000" if prepaid else None)
