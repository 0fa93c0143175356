"""The recorder (in process and over HTTP), the ``emu_*`` fault knobs, ``serve()`` and many concurrent sessions."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import aiohttp
import pytest
from aiohttp import WSMsgType

from sttgate.emulators.app import RECORDER, EmulatorConfig, serve
from tests.support.emulator_client import (
    AAI_QUERY,
    EL_QUERY,
    assert_silent,
    el_chunk,
    frames,
    recv,
    recv_json,
    recv_until_closed,
    silence,
    tone,
)


async def raw_upgrade(url: str, headers: dict[str, str] | None = None) -> tuple[int, object]:
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with aiohttp.ClientSession() as s, s.get(url, headers={**upgrade, **(headers or {})}) as r:
        return r.status, await r.json(content_type=None)


# --- recorder --------------------------------------------------------------------------------------------


async def test_recorder_keeps_raw_query_headers_frames_audio_and_close(emu):
    e = await emu()
    assert e.app[RECORDER] is e.recorder
    mark = e.recorder.next_seq
    raw_query = "sample_rate=16000&keyterms_prompt=%5B%22a%22%2C+%22b%22%5D&format_turns=True&x=a%20b&x=c+d"
    ws = await e.aai(raw_query, headers={"User-Agent": "AssemblyAI/1.0 (test)", "X-Trace": "t-1"})
    rec = await e.recorder.wait_for_session(provider="assemblyai", since=mark, accepted=True)
    assert rec.query_string == raw_query
    assert rec.query[-2:] == [("x", "a b"), ("x", "c d")]
    assert rec.path == "/v3/ws"
    assert rec.header("x-trace") == "t-1" and rec.header("authorization") == "emulator-assemblyai-key"
    await recv_json(ws)  # Begin
    pcm = tone(0.1)
    await ws.send_bytes(pcm)
    await ws.send_bytes(silence(0.05))
    await ws.send_str('{"type":"KeepAlive"}')
    await rec.wait_for_frames_in(3)
    assert [(f.type, f.size) for f in rec.frames_in] == [("binary", 3200), ("binary", 1600), ("text", 20)]
    assert rec.frames_in[0].data == pcm and rec.texts_in() == ['{"type":"KeepAlive"}']
    assert rec.audio_bytes == 4800 and abs(rec.audio_seconds - 0.15) < 1e-9
    assert [c.bytes for c in rec.audio_chunks] == [3200, 1600]
    assert rec.audio_chunks[0].t <= rec.audio_chunks[1].t
    await ws.close(code=4000, message=b"client done")
    await rec.wait_ended()
    assert (rec.close_code, rec.close_reason, rec.closed_by) == (4000, "client done", "client")
    assert ws.close_code == 4000  # the emulator echoed the client's close
    assert rec.json_out()[0]["type"] == "Begin" and rec.id == rec.json_out()[0]["id"]


async def test_recorder_over_http(emu):
    e = await emu()
    ws = await e.el(EL_QUERY + "&keyterms=a%20b")
    await recv_json(ws)
    await ws.send_str(el_chunk(silence(0.1)))
    await ws.close()
    await e.recorder.sessions[-1].wait_ended()
    async with e.http.get(e.http_url("/_emulator/sessions")) as r:
        body = await r.json()
    (s,) = body["sessions"]
    assert s["provider"] == "elevenlabs" and s["query_string"] == EL_QUERY + "&keyterms=a%20b"
    assert ["xi-api-key", "emulator-elevenlabs-key"] in [[k.lower(), v] for k, v in s["headers"]]
    assert s["counts"]["text_frames_in"] == 1 and s["audio"]["bytes"] == 3200
    assert s["frames_in"][0]["type"] == "text" and "data" not in s["frames_in"][0]
    assert (s["close_code"], s["closed_by"], s["ended"]) == (1000, "client", True)
    async with e.http.get(e.http_url(f"/_emulator/sessions/{s['seq']}", "payloads=1")) as r:
        one = await r.json()
    assert json.loads(one["frames_in"][0]["data"])["message_type"] == "input_audio_chunk"
    async with e.http.delete(e.http_url("/_emulator/sessions")) as r:
        assert (await r.json()) == {"deleted": 1}
    async with e.http.get(e.http_url("/_emulator/sessions")) as r:
        assert (await r.json()) == {"sessions": []}
    async with e.http.get(e.http_url("/_emulator/sessions/99")) as r:
        assert r.status == 404


async def test_recorder_caps(emu):
    e = await emu(record_max_frames=3, record_max_payload_bytes=5000)
    ws = await e.aai()
    await recv_json(ws)
    for _ in range(5):
        await ws.send_bytes(silence(0.1))  # 3200 bytes each
    rec = await e.recorder.sessions[-1].wait_for_frames_in(5)
    assert rec.binary_frames_in == 5 and rec.bytes_in == 16000 and rec.audio_bytes == 16000
    assert len(rec.frames_in) == 3 and len(rec.audio_chunks) == 3
    assert rec.frames_in[0].data is not None and rec.frames_in[1].data is None  # payload budget spent
    await ws.close()


async def test_recorder_global_budgets_and_forgetting(emu):
    e = await emu(record_max_total_payload_bytes=4000, record_max_total_frames=6, record_max_sessions=2)
    for _ in range(2):
        ws = await e.aai()
        await recv_json(ws)
        await ws.send_bytes(silence(0.1))
        await ws.send_bytes(silence(0.1))
        await e.recorder.sessions[-1].wait_for_frames_in(2)
        await ws.close()
        await e.recorder.sessions[-1].wait_ended()
    first, second = e.recorder.sessions
    assert first.frames_in[0].data is not None and first.frames_in[1].data is None  # 3200 + 3200 > 4000
    assert len(first.frames_out) == 1 and len(first.frames_in) == 2 and len(first.audio_chunks) == 2
    assert second.frames_in == [] and second.binary_frames_in == 2  # the global frame budget was used up
    ws = await e.aai()  # a third session: the oldest ended one is forgotten and its budget released
    await recv_json(ws)
    await ws.send_bytes(silence(0.1))
    third = await e.recorder.wait_for_session(lambda r: r.frames_in_count == 1, since=3)
    assert first not in e.recorder.sessions
    assert third.frames_in[0].data is not None
    await ws.close()


async def test_wait_for_session_is_event_driven(emu):
    e = await emu()
    waiter = asyncio.create_task(e.recorder.wait_for_session(provider="elevenlabs", timeout=3))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    ws = await e.el()
    rec = await waiter
    assert rec.provider == "elevenlabs"
    ended = asyncio.create_task(rec.wait_ended(timeout=3))
    await asyncio.sleep(0.05)
    assert not ended.done()
    await ws.close()
    await ended
    with pytest.raises(TimeoutError):
        await e.recorder.wait_for_session(provider="assemblyai", timeout=0.05)


# --- fault knobs -----------------------------------------------------------------------------------------


async def test_close_after_frames_with_code_and_reason(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_close_after_frames=2&emu_close_code=4001&emu_close_reason=bye%20now")
    await recv_json(ws)
    await ws.send_bytes(silence(0.1))
    await assert_silent(ws, 0.05)
    await ws.send_bytes(silence(0.1))
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [] and (closed.code, closed.reason) == (4001, "bye now")
    rec = await e.recorder.sessions[-1].wait_ended()
    assert (rec.close_code, rec.close_reason, rec.closed_by) == (4001, "bye now", "emulator")
    # N=0: right after the start message; default code 1000 ""
    ws = await e.el(EL_QUERY + "&emu_close_after_frames=0")
    msgs, closed = await recv_until_closed(ws)
    assert [m["message_type"] for m in msgs] == ["session_started"] and (closed.code, closed.reason) == (1000, "")


async def test_close_after_seconds(emu):
    e = await emu()
    t = time.monotonic()
    ws = await e.el(EL_QUERY + "&emu_close_after_seconds=0.2&emu_close_code=3000")
    _msgs, closed = await recv_until_closed(ws)
    assert closed.code == 3000 and 0.15 < time.monotonic() - t < 1.5


async def test_close_after_seconds_while_frames_keep_arriving(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_close_after_seconds=0.3&emu_rate_check=off")
    await recv_json(ws)
    closed = None
    async with asyncio.timeout(3):
        while closed is None:
            await ws.send_bytes(silence(0.05))
            try:
                msg = await ws.receive(timeout=0.02)
            except TimeoutError:
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
                closed = ws.close_code
    assert closed == 1000


@pytest.mark.parametrize("knob", ["emu_drop_after_frames=1", "emu_drop_after_seconds=0.1"])
async def test_drop_aborts_without_close_frame(emu, knob):
    e = await emu()
    ws = await e.aai(f"{AAI_QUERY}&{knob}")
    await recv_json(ws)
    await ws.send_bytes(silence(0.1))
    msg = await ws.receive(timeout=3)
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)  # no CLOSE frame
    assert ws.close_code == 1006
    rec = await e.recorder.sessions[-1].wait_ended()
    assert rec.closed_by == "emulator_drop" and rec.close_code is None


async def test_handshake_delay(emu):
    e = await emu()
    t = time.monotonic()
    ws = await e.aai(AAI_QUERY + "&emu_handshake_delay_ms=200")
    assert time.monotonic() - t >= 0.2
    await recv_json(ws)
    await ws.close()


async def test_handshake_status_refuses_with_json(emu):
    e = await emu()
    status, body = await raw_upgrade(e.http_url("/v3/ws", AAI_QUERY + "&emu_handshake_status=503"))
    assert status == 503 and "error" in body
    status, body = await raw_upgrade(
        e.http_url("/v1/speech-to-text/realtime", EL_QUERY + "&emu_handshake_status=429&emu_error_message=slow"),
        {"xi-api-key": "emulator-elevenlabs-key"},
    )
    assert status == 429 and body == {"error": "slow"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await e.aai(AAI_QUERY + "&emu_handshake_status=401")
    assert info.value.status == 401
    rec = await e.recorder.sessions[-1].wait_ended()
    assert (rec.http_status, rec.accepted, rec.closed_by) == (401, False, "refused")


async def test_unknown_or_bad_knob_is_refused_before_the_upgrade(emu):
    e = await emu()
    status, body = await raw_upgrade(e.http_url("/v3/ws", "emu_clsoe_after_frames=1"))
    assert status == 400 and body["error"]["code"] == "invalid_emulator_parameter"
    status, body = await raw_upgrade(e.http_url("/v3/ws", "emu_close_after_frames=x"))
    assert status == 400
    e2 = await emu(fault_injection=False)  # knobs ignored altogether
    ws = await e2.aai(AAI_QUERY + "&emu_echo=1&emu_bogus=1")
    assert (await recv_json(ws))["type"] == "Begin"
    await ws.close()


async def test_plain_get_is_not_an_upgrade(emu):
    e = await emu()
    async with e.http.get(e.http_url("/v3/ws")) as r:
        assert r.status == 426


async def test_echo_mode_is_byte_exact_for_both_frame_types(emu):
    e = await emu()
    payload_bin = bytes(range(256)) * 10
    payload_txt = '{"message_type": "anything", "ü": "\\u00fc", "not": protocol'
    for connect, query in ((e.aai, AAI_QUERY), (e.el, EL_QUERY)):
        ws = await connect(query + "&emu_echo=1")
        await ws.send_bytes(payload_bin)
        await ws.send_str(payload_txt)
        await ws.send_bytes(b"\x01")  # too short for AssemblyAI: echo does no validation
        m1, m2, m3 = [await ws.receive(timeout=2) for _ in range(3)]
        assert (m1.type, m1.data) == (WSMsgType.BINARY, payload_bin)
        assert (m2.type, m2.data) == (WSMsgType.TEXT, payload_txt)
        assert (m3.type, m3.data) == (WSMsgType.BINARY, b"\x01")
        await ws.close(code=4005, message=b"relay test")
        rec = await e.recorder.sessions[-1].wait_ended()
        assert rec.mode == "echo" and rec.texts_out() == [payload_txt]  # no start message
        assert [f.type for f in rec.frames_out] == ["binary", "text", "binary"]
        assert (rec.close_code, rec.close_reason) == (4005, "relay test")
        assert ws.close_code == 4005


async def test_echo_mode_still_checks_the_key(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_echo=1", key="wrong")
    msgs, closed = await recv_until_closed(ws)
    assert msgs[0]["error_code"] == 1008 and closed.code == 1008
    ws = await e.el(EL_QUERY + "&emu_echo=1", key="wrong")
    msgs, closed = await recv_until_closed(ws)
    assert msgs[0]["message_type"] == "auth_error" and closed.code == 1000


async def test_start_delay(emu):
    e = await emu()
    ws = await e.el(EL_QUERY + "&emu_start_delay_ms=150")
    await assert_silent(ws, 0.1)
    assert (await recv_json(ws))["message_type"] == "session_started"
    await ws.close()


async def test_max_session_knob_for_elevenlabs(emu):
    e = await emu()
    ws = await e.el(EL_QUERY + "&emu_max_session_seconds=0.1")
    msgs, closed = await recv_until_closed(ws)
    assert [m["message_type"] for m in msgs] == ["session_started", "session_time_limit_exceeded"]
    assert closed.code == 1000


# --- serve() and load --------------------------------------------------------------------------------------


async def test_serve_runs_until_cancelled_and_closes_live_sessions_with_1001():
    ready: asyncio.Future[tuple] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve("127.0.0.1", 0, EmulatorConfig(), on_ready=lambda app, port: ready.set_result((app, port)))
    )
    app, port = await asyncio.wait_for(ready, 3)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/_emulator/health") as r:
            assert (await r.json())["status"] == "ok"
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{port}/v3/ws?sample_rate=16000", headers={"Authorization": "emulator-assemblyai-key"}
        )
        assert (await recv_json(ws))["type"] == "Begin"
        task.cancel()
        closed = await recv(ws)
        assert closed.code == 1001
        with pytest.raises(asyncio.CancelledError):
            await task
    assert app[RECORDER].sessions[0].closed_by == "shutdown"


async def test_many_concurrent_sessions(emu):
    e = await emu()
    n = 150
    pcm = tone(0.6) + silence(0.6)

    async def aai_session() -> dict:
        ws = await e.aai()
        await recv_json(ws)
        for f in frames(pcm):
            await ws.send_bytes(f)
        await ws.send_str('{"type":"Terminate"}')
        msgs, closed = await recv_until_closed(ws, timeout=20)
        assert closed.code == 1000
        return msgs[-1]

    async def el_session() -> str:
        ws = await e.el()
        await recv_json(ws)
        for f in frames(pcm):
            await ws.send_str(el_chunk(f))
        await ws.send_str(el_chunk(b"", commit=True))
        while True:
            m = await recv_json(ws, timeout=20)
            if m["message_type"] == "committed_transcript":
                await ws.close()
                return m["text"]

    t = time.monotonic()
    results = await asyncio.gather(*(aai_session() for _ in range(n)), *(el_session() for _ in range(n)))
    elapsed = time.monotonic() - t
    assert all(r == {"type": "Termination", "audio_duration_seconds": 1, "session_duration_seconds": 0} or
               r["type"] == "Termination" for r in results[:n])  # fmt: skip
    assert results[n:] == ["alpha bravo"] * n
    assert elapsed < 20
