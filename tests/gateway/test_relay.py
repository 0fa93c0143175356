"""Forwarding, relay and close codes (docs/contract.md#relay), end to end: client ↔ gateway ↔ emulator over real
sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import random

import aiohttp
from aiohttp import WSMsgType

from sttgate.admin import Admin
from sttgate.providers import names
from sttgate.web.services import SERVICES
from tests.support.emulator import OPERATOR_KEYS
from tests.support.waiting import wait_for


async def last_session(gw, account_id):
    """The account's newest session once the gateway has ended it."""

    async def ended():
        usage = await Admin(gw.app[SERVICES].store, names()).usage(account_id)
        return usage["sessions"][0] if usage["sessions"] and usage["sessions"][0]["ended_at"] else None

    return await wait_for(ended)


async def test_query_forwarded_byte_exact_with_operator_credential_and_no_client_key(gateway, account, caplog):
    caplog.set_level(logging.DEBUG)
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    # provider, api_key and token are removed wherever they stand; everything else keeps order and encoding.
    query = (
        f"sample_rate=16000&provider=assemblyai&format_turns=True&api_key={acct.key}"
        "&keyterms_prompt=%5B%22Sttgate%22%2C%22Universal%22%5D&token=sttg_ignored&speaker_labels=true"
        "&x=a+b&x=%20c&empty=&emu_echo=1"
    )
    forwarded = (
        "sample_rate=16000&format_turns=True&keyterms_prompt=%5B%22Sttgate%22%2C%22Universal%22%5D"
        "&speaker_labels=true&x=a+b&x=%20c&empty=&emu_echo=1"
        # the price book's default model, which AssemblyAI requires (docs/billing.md#the-price-book)
        "&speech_model=universal-streaming-english"
    )
    async with gw.http.ws_connect(gw.ws_url(query)) as ws:
        await ws.send_str('{"type":"UpdateConfiguration","max_turn_silence":1000}')
        await ws.receive(timeout=5)
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.query_string == forwarded
    assert rec.header("Authorization") == OPERATOR_KEYS["assemblyai"]
    seen = [rec.query_string, *(v for _, v in rec.headers), *rec.texts_in()]
    assert not any(acct.key in item for item in seen)
    await last_session(gw, acct.id)
    assert acct.key not in caplog.text
    assert "event=session_start" in caplog.text and "event=session_end" in caplog.text


async def test_elevenlabs_gets_model_id_default_and_xi_api_key_but_never_the_client_key(gateway, account, caplog):
    caplog.set_level(logging.DEBUG)
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    headers = {"Authorization": f"Bearer {acct.key}", "xi-api-key": "client-header-not-forwarded"}
    url = gw.ws_url("provider=elevenlabs&audio_format=pcm_16000&language_code=en")
    async with gw.http.ws_connect(url, headers=headers) as ws:
        started = await ws.receive_json(timeout=5)
        assert started["message_type"] == "session_started"
    rec = await recorder.wait_for_session(provider="elevenlabs", since=mark)
    assert rec.query_string == "audio_format=pcm_16000&language_code=en&model_id=scribe_v2_realtime"
    assert rec.header("xi-api-key") == OPERATOR_KEYS["elevenlabs"]
    assert rec.header("Authorization") is None
    assert not any(acct.key in v for _, v in rec.headers)
    await last_session(gw, acct.id)
    assert acct.key not in caplog.text


def random_frames(rng: random.Random, count: int) -> list[str | bytes]:
    alphabet = 'abcxyz 019{}"\\\n\té€😀\u0000'
    sizes = [0, 0, 1 << 20, 1 << 20, 1, 125, 126, 65535, 65536]
    frames: list[str | bytes] = []
    for i in range(count):
        size = sizes[i] if i < len(sizes) else rng.choice((rng.randrange(0, 64), rng.randrange(64, 8192)))
        if rng.random() < 0.5:
            frames.append(rng.randbytes(size))
        else:
            frames.append("".join(rng.choice(alphabet) for _ in range(min(size, 1 << 20) // 4 or size)))
    rng.shuffle(frames)
    return frames


async def test_thousand_random_frames_arrive_byte_exact_in_order_both_ways(gateway, account):
    gw = await gateway()
    acct = await account()
    frames = random_frames(random.Random(6455), 1000)
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:

        async def send():
            for frame in frames:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)

        sender = asyncio.create_task(send())
        received = []
        for _ in frames:
            msg = await ws.receive(timeout=10)
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg
            received.append(msg.data)
        await sender
    assert [type(f) for f in received] == [type(f) for f in frames]
    assert received == frames
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    # The client's frames, then the provider's end message the gateway sent when the client closed.
    assert rec.texts_in()[-1] == '{"type":"Terminate"}'
    kinds = ["binary" if isinstance(f, bytes) else "text" for f in frames]
    assert [f.type for f in rec.frames_in[:-1]] == kinds
    sizes = [f.size for f in rec.frames_in[:-1]]
    assert sizes == [len(f) if isinstance(f, bytes) else len(f.encode()) for f in frames]


async def test_client_close_code_and_reason_reach_the_provider_and_come_back(gateway, account):
    """After the graceful end (docs/contract.md#graceful-provider-end) the provider hop is closed with the client's
    code and reason: ElevenLabs stays open after its commit answer, so the gateway's close carries both."""
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("elevenlabs", acct.key) as ws:
        await ws.close(code=4321, message="client says bye")
        assert ws.close_code == 4321
    rec = await recorder.wait_for_session(provider="elevenlabs", since=mark)
    await rec.wait_ended()
    assert json.loads(rec.texts_in()[-1])["commit"] is True  # the provider's end message came first
    assert (rec.client_close_code, rec.client_close_reason) == (4321, "client says bye")
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (4321, "client")


async def test_a_provider_that_closes_after_its_end_message_gets_the_clients_code_in_answer(gateway, account):
    """AssemblyAI closes by itself after ``Terminate``: the gateway answers that close with the client's code (the
    emulator's server sees only the code of a close it did not start)."""
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        await ws.close(code=4321, message="client says bye")
        assert ws.close_code == 4321
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.texts_in() == ['{"type":"Terminate"}'] and rec.client_close_code == 4321
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (4321, "client")


async def test_provider_close_code_and_reason_reach_the_client(gateway, account):
    gw = await gateway()
    acct = await account()
    params = "emu_echo=1&emu_close_after_frames=1&emu_close_code=4123&emu_close_reason=provider+says+bye"
    async with gw.connect("assemblyai", acct.key, params) as ws:
        await ws.send_bytes(b"\x00" * 3200)
        echoed = await ws.receive(timeout=5)
        assert echoed.type is WSMsgType.BINARY
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4123, "provider says bye")
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (4123, "upstream")


async def test_provider_protocol_close_reaches_the_client(gateway, account):
    gw = await gateway()
    acct = await account()
    async with gw.connect("assemblyai", acct.key, "sample_rate=16000&emu_rate_check=off") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "Begin"
        await ws.send_bytes(b"\x00" * 3200)
        await ws.send_str('{"type":"Terminate"}')
        messages = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not WSMsgType.TEXT:
                break
            messages.append(msg.json())
        assert messages[-1]["type"] == "Termination"
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1000, "Session Ended")


async def test_upstream_tcp_drop_gives_client_1014(gateway, account):
    gw = await gateway()
    acct = await account()
    async with gw.connect("assemblyai", acct.key, "emu_echo=1&emu_drop_after_frames=1") as ws:
        await ws.send_bytes(b"\x00" * 3200)
        while (msg := await ws.receive(timeout=5)).type is WSMsgType.BINARY:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1014, "upstream connection lost")
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1014, "upstream")


async def test_client_tcp_abort_closes_upstream_with_1001_within_a_second(gateway, account):
    gw = await gateway()
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    ws = await gw.connect("assemblyai", acct.key, "emu_echo=1")
    await ws.send_bytes(b"\x00" * 3200)
    await ws.receive(timeout=5)
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    ws._response.connection.transport.abort()
    await rec.wait_ended(timeout=1.0)
    assert rec.client_close_code == 1001
    session = await last_session(gw, acct.id)
    assert session["closed_by"] == "client"
    await ws.close()


async def test_frame_over_the_limit_closes_with_1009(gateway, account):
    gw = await gateway(max_frame_bytes=1000)
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        await ws.send_bytes(b"\x01" * 1000)  # exactly the limit: relayed
        assert (await ws.receive(timeout=5)).data == b"\x01" * 1000
        await ws.send_bytes(b"\x02" * 1001)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1009, "message too big")
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    # The frame over the limit never reached the provider; the provider's end message did.
    assert rec.binary_frames_in == 1 and rec.bytes_in == 1000 + len('{"type":"Terminate"}')
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1009, "gateway")


async def test_idle_session_is_closed_with_1008(gateway, account):
    gw = await gateway(idle_timeout_seconds=0.3)
    acct = await account()
    recorder = gw.emulator.recorder
    mark = recorder.next_seq
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        # The provider's answer to the gateway's end message (here the echo of Terminate) still reaches the client.
        assert (await ws.receive(timeout=5)).data == '{"type":"Terminate"}'
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "idle timeout")
    rec = await recorder.wait_for_session(provider="assemblyai", since=mark)
    await rec.wait_ended()
    assert rec.client_close_code == 1008
    session = await last_session(gw, acct.id)
    assert (session["close_code"], session["closed_by"]) == (1008, "gateway")


async def test_pings_are_answered_per_hop(gateway, account):
    gw = await gateway(heartbeat_seconds=0.05)
    acct = await account()
    async with gw.connect("assemblyai", acct.key, "emu_echo=1", autoping=False) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.PING
        await ws.pong(msg.data)
        await ws.send_str("still here")
        assert (await ws.receive(timeout=5)).data == "still here"


async def test_provider_auth_error_in_band_is_relayed_and_counted(gateway, account, caplog):
    gw = await gateway(elevenlabs_api_key="wrong-operator-key")
    acct = await account()
    async with gw.connect("elevenlabs", acct.key) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["message_type"] == "auth_error"
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert 'sttgate_upstream_auth_errors_total{provider="elevenlabs"} 1.0' in text
    assert "event=upstream_auth_error" in caplog.text


async def test_session_id_header_names_the_recorded_session(gateway, account):
    gw = await gateway()
    acct = await account()
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
        session_id = ws._response.headers["X-Session-Id"]
    assert (await last_session(gw, acct.id))["id"] == session_id


async def test_many_sessions_relay_independently(gateway, account):
    gw = await gateway()
    acct = await account(max_streams=20)

    async def one(i: int) -> bytes:
        async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:
            payload = bytes([i]) * (100 + i)
            await ws.send_bytes(payload)
            return (await ws.receive(timeout=5)).data

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == [bytes([i]) * (100 + i) for i in range(20)]


async def test_client_without_aiohttp_autoclose_sees_echoed_close(gateway, account):
    gw = await gateway()
    acct = await account()
    ws = await gw.connect("assemblyai", acct.key, "emu_echo=1", autoclose=False)
    await ws.close(code=1000, message=b"done")
    assert ws.close_code == 1000
    assert isinstance(ws, aiohttp.ClientWebSocketResponse)


async def test_a_side_that_does_not_read_gets_backpressure_not_a_buffer(gateway, account):
    """The client sends 128 MiB into an echo it does not read: the pipeline fills its socket buffers (tens of MiB on
    loopback) and stops; the gateway holds no queue of its own. Once the client reads, everything arrives in order."""
    gw = await gateway()
    acct = await account()
    frame_size, count = 1 << 18, 512
    patterns = [bytes([i]) * frame_size for i in range(7)]
    frames = [patterns[i % 7] for i in range(count)]
    async with gw.connect("assemblyai", acct.key, "emu_echo=1") as ws:

        async def send_all():
            for frame in frames:
                await ws.send_bytes(frame)

        sender = asyncio.create_task(send_all())
        done, _ = await asyncio.wait({sender}, timeout=1.0)
        assert not done, "128 MiB were accepted while nobody read the echo: something buffers without bound"
        live = next(iter(gw.app[SERVICES].sessions.live.values()))
        assert live.bytes_up < count * frame_size
        received = 0
        for expected in frames:
            msg = await ws.receive(timeout=10)
            assert msg.data == expected
            received += 1
        await sender
    assert received == count


async def test_more_than_a_hundred_sessions_at_once(gateway, account):
    """aiohttp's default connector stops at 100 connections: the 101st upstream session must not wait."""
    gw = await gateway()
    acct = await account(max_streams=200)
    sockets = await asyncio.gather(*(gw.connect("assemblyai", acct.key, "emu_echo=1") for _ in range(120)))
    try:
        for i, ws in enumerate(sockets):
            await ws.send_bytes(i.to_bytes(2, "big"))
        for i, ws in enumerate(sockets):
            assert (await ws.receive(timeout=10)).data == i.to_bytes(2, "big")
        assert len(gw.app[SERVICES].sessions.live) == 120
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
