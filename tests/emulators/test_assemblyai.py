"""AssemblyAI emulator: one or more tests per item of the emulator's duties (docs/contract.md#emulators)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

from aiohttp import WSMsgType

from sttgate.emulators.assemblyai import AssemblyAIOptions
from sttgate.emulators.transcriber import pcm16_to_mulaw
from tests.support.emulator_client import (
    AAI_KEY,
    AAI_QUERY,
    assert_silent,
    frames,
    recv_json,
    recv_until,
    recv_until_closed,
    silence,
    tone,
)

GENERIC = "See Error message for details"


async def begun(ws) -> dict:
    msg = await recv_json(ws)
    assert msg["type"] == "Begin", msg
    return msg


async def send_audio(ws, pcm: bytes, ms: int = 100, rate: int = 16000, bps: int = 2) -> None:
    for f in frames(pcm, ms, rate, bps):
        await ws.send_bytes(f)


async def mint(e, query: str = "expires_in_seconds=60", key: str | None = AAI_KEY):
    headers = {"Authorization": key} if key is not None else {}
    async with e.http.get(e.http_url("/v3/token", query), headers=headers) as r:
        return r.status, await r.json()


# --- 1. endpoint ----------------------------------------------------------------------------------------


async def test_1_v3_ws_and_any_path_ending_in_v3_ws(emu):
    e = await emu()
    for path in ("/v3/ws", "/assemblyai/v3/ws", "/a/b/v3/ws"):
        ws = await e.aai(path=path)
        assert ws.protocol is None
        await begun(ws)
        await ws.close()
    assert [r.path for r in e.recorder.sessions] == ["/v3/ws", "/assemblyai/v3/ws", "/a/b/v3/ws"]


# --- 2. authentication after the 101 --------------------------------------------------------------------


async def test_2_wrong_key_gets_error_1008_and_close_1008(emu):
    e = await emu()
    ws = await e.aai(key="wrong")
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [{"type": "Error", "error_code": 1008, "error": "Unauthorized Connection: Invalid API key"}]
    assert (closed.code, closed.reason) == (1008, GENERIC)
    rec = await e.recorder.sessions[-1].wait_ended()
    assert rec.authenticated is False and rec.id is None  # never a Begin


async def test_2_missing_credentials(emu):
    e = await emu()
    ws = await e.aai(key=None)
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [
        {"type": "Error", "error_code": 1008, "error": "Unauthorized Connection: Missing Authorization header"}
    ]
    assert (closed.code, closed.reason) == (1008, GENERIC)


async def test_2_bearer_is_not_the_documented_form(emu):
    e = await emu()
    ws = await e.aai(key=f"Bearer {AAI_KEY}")
    msgs, closed = await recv_until_closed(ws)
    assert msgs[0]["error_code"] == 1008 and closed.code == 1008
    e2 = await emu(assemblyai=AssemblyAIOptions(accept_bearer=True))
    ws = await e2.aai(key=f"Bearer {AAI_KEY}")
    await begun(ws)
    await ws.close()


async def test_2_token_in_header_or_query(emu):
    e = await emu()
    _, body = await mint(e)
    ws = await e.aai(key=body["token"])  # how the Python SDK sends it
    await begun(ws)
    await ws.close()
    _, body = await mint(e)
    ws = await e.aai(AAI_QUERY + f"&token={body['token']}", key=None)
    await begun(ws)
    await ws.close()
    ws = await e.aai(AAI_QUERY + "&token=bogus", key=None)
    msgs, closed = await recv_until_closed(ws)
    assert msgs[0]["error"] == "Unauthorized Connection: Invalid API key" and closed.code == 1008


# --- 3. query parsing -----------------------------------------------------------------------------------


async def test_3_sdk_style_query_is_accepted(emu):
    e = await emu()
    q = (
        "end_of_turn_confidence_threshold=0.7&min_end_of_turn_silence_when_confident=160&max_turn_silence=2400"
        "&format_turns=True&keyterms_prompt=%5B%22AssemblyAI%22%2C+%22Universal%22%5D&sample_rate=16000"
        "&speech_model=universal-streaming-english&speaker_labels=FALSE&future_param=x"
    )
    ws = await e.aai(q)
    begin = await begun(ws)
    assert begin["configuration"]["model"] == "universal-streaming-english"
    await ws.close()


async def test_3_defaults_and_old_and_new_silence_names(emu):
    from sttgate.emulators.assemblyai import parse_params

    p = parse_params({})
    assert (p.sample_rate, p.encoding, p.format_turns) == (16000, "pcm_s16le", False)
    assert parse_params({"min_end_of_turn_silence_when_confident": ["160"]}).min_turn_silence == 160
    assert parse_params({"min_turn_silence": ["200"]}).min_turn_silence == 200
    assert parse_params({"keyterms_prompt": ['["a b", "c"]']}).keyterms_prompt == ["a b", "c"]
    assert parse_params({"format_turns": ["true"]}).format_turns is True


async def test_3_invalid_values_get_3006(emu):
    e = await emu()
    for bad in (
        "sample_rate=abc",
        "sample_rate=0",
        "encoding=pcm_f32le",
        "format_turns=yes",
        "keyterms_prompt=AssemblyAI",
        "end_of_turn_confidence_threshold=2",
        "inactivity_timeout=2",
        "speech_model=nope",
    ):
        ws = await e.aai(bad)
        msgs, closed = await recv_until_closed(ws)
        assert len(msgs) == 1 and msgs[0]["type"] == "Error" and msgs[0]["error_code"] == 3006, bad
        assert msgs[0]["error"].startswith("User Input Validation Error: ")
        assert closed.code == 3006 and closed.reason == msgs[0]["error"]


# --- 4. Begin -------------------------------------------------------------------------------------------


async def test_4_begin_shape(emu):
    e = await emu()
    ws = await e.aai(headers={"AssemblyAI-Version": "2025-05-12"})
    begin = await begun(ws)
    assert set(begin) == {"type", "id", "expires_at", "configuration"}
    uuid.UUID(begin["id"])
    assert isinstance(begin["expires_at"], int)
    assert abs(begin["expires_at"] - (time.time() + 10800)) <= 2
    assert begin["configuration"] == {
        "model": "universal-streaming-english",
        "mode": None,
        "api_version": "2025-05-12",
        "speaker_labels": False,
        "redact_pii": False,
        "filter_profanity": False,
        "domain": None,
        "voice_focus": None,
    }
    assert e.recorder.sessions[-1].id == begin["id"]
    await ws.close()


async def test_4_begin_expires_at_follows_token_cap(emu):
    e = await emu()
    _, body = await mint(e, "expires_in_seconds=60&max_session_duration_seconds=300")
    ws = await e.aai(key=body["token"])
    begin = await begun(ws)
    assert abs(begin["expires_at"] - (time.time() + 300)) <= 2
    await ws.close()


async def test_4_begin_delay(emu):
    e = await emu(assemblyai=AssemblyAIOptions(begin_delay_seconds=0.2))
    t = time.monotonic()
    ws = await e.aai()
    connected = time.monotonic() - t
    await begun(ws)
    assert connected < 0.2 <= time.monotonic() - t
    await ws.close()


# --- 5. binary frames -----------------------------------------------------------------------------------


async def test_5_chunk_shorter_than_50ms_gets_3007(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await ws.send_bytes(silence(0.025))
    msgs, closed = await recv_until_closed(ws)
    text = "Input Duration Error: Input Duration Violation: 25.0 ms. Expected between 50 and 1000 ms"
    assert msgs == [{"type": "Error", "error_code": 3007, "error": text}]
    assert (closed.code, closed.reason) == (3007, text)


async def test_5_chunk_longer_than_1000ms_gets_3007_and_bounds_are_inclusive(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await ws.send_bytes(silence(0.05))
    await ws.send_bytes(silence(1.0))
    await assert_silent(ws)
    await ws.send_bytes(silence(1.0) + b"\x00\x00" * 16)
    msgs, closed = await recv_until_closed(ws)
    assert (
        msgs[0]["error"] == "Input Duration Error: Input Duration Violation: 1001.0 ms. Expected between 50 and 1000 ms"
    )
    assert closed.code == 3007


async def test_5_mulaw_duration(emu):
    e = await emu()
    ws = await e.aai("sample_rate=8000&encoding=pcm_mulaw")
    await begun(ws)
    await ws.send_bytes(pcm16_to_mulaw(silence(0.1, 8000)))  # 800 bytes = 100 ms
    await assert_silent(ws)
    await ws.send_bytes(pcm16_to_mulaw(silence(0.025, 8000)))  # 200 bytes = 25 ms
    msgs, closed = await recv_until_closed(ws)
    assert "25.0 ms" in msgs[0]["error"] and closed.code == 3007
    rec = await e.recorder.sessions[-1].wait_ended()
    assert rec.audio_bytes == 1000 and abs(rec.audio_seconds - 0.125) < 1e-9


async def test_5_faster_than_real_time_gets_3007(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await send_audio(ws, silence(4.0))  # 4 s of audio at once: over 1.25x real time + 2 s
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1]["type"] == "Error" and msgs[-1]["error_code"] == 3007
    assert re.fullmatch(
        r"Audio Transmission Rate Exceeded: Received 2\.\d\d sec\. audio in 0\.\d\d sec", msgs[-1]["error"]
    )
    assert closed.code == 3007


async def test_5_rate_check_off_and_paced_audio_pass(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_rate_check=off")
    await begun(ws)
    await send_audio(ws, silence(10.0))
    await ws.send_str(json.dumps({"type": "Terminate"}))
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1]["type"] == "Termination" and msgs[-1]["audio_duration_seconds"] == 10
    # paced within tolerance: 0.5 s of audio per 0.4 s of wall time, with the burst slack
    e2 = await emu(assemblyai=AssemblyAIOptions(rate_burst_seconds=0.6))
    ws = await e2.aai()
    await begun(ws)
    for _ in range(4):
        await send_audio(ws, silence(0.5))
        await asyncio.sleep(0.4)
    await ws.send_str(json.dumps({"type": "Terminate"}))
    msgs, closed = await recv_until_closed(ws)
    assert [m["type"] for m in msgs] == ["Termination"] and closed.code == 1000


# --- 6. text frames -------------------------------------------------------------------------------------


async def test_6_terminate_flushes_turn_then_termination_then_close(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await send_audio(ws, tone(0.6))
    await ws.send_str(json.dumps({"type": "Terminate"}))
    msgs, closed = await recv_until_closed(ws)
    assert [m["type"] for m in msgs] == ["Turn", "Turn", "Turn", "Termination"]
    assert msgs[2]["end_of_turn"] is True and msgs[2]["transcript"] == "alpha bravo"
    assert msgs[3] == {"type": "Termination", "audio_duration_seconds": 1, "session_duration_seconds": 0}
    assert (closed.code, closed.reason) == (1000, "Session Ended")


async def test_6_force_endpoint_ends_the_turn(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await ws.send_str(json.dumps({"type": "ForceEndpoint"}))  # no active turn: nothing
    await assert_silent(ws)
    await send_audio(ws, tone(0.6))
    turns = [await recv_json(ws) for _ in range(2)]
    assert [t["end_of_turn"] for t in turns] == [False, False]
    await ws.send_str(json.dumps({"type": "ForceEndpoint"}))
    eot = await recv_json(ws)
    assert eot["end_of_turn"] is True and eot["turn_order"] == 0 and eot["transcript"] == "alpha bravo"
    await send_audio(ws, tone(0.3))
    nxt = await recv_json(ws)
    assert nxt["turn_order"] == 1 and nxt["words"][0]["text"] == "charlie"
    await ws.close()


async def test_6_update_configuration_applies_silently(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    # the Python SDK puts "type" last
    await ws.send_str('{"end_of_turn_confidence_threshold":1.0,"max_turn_silence":200,"type":"UpdateConfiguration"}')
    await assert_silent(ws)
    await send_audio(ws, tone(0.3) + silence(0.2))
    msgs = await recv_until(ws, lambda m: m.get("end_of_turn") is True)
    assert msgs[-1]["transcript"] == "alpha" and msgs[-1]["end_of_turn_confidence"] == 1.0
    await ws.send_str(json.dumps({"type": "UpdateConfiguration", "max_turn_silence": "long"}))
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1]["error_code"] == 3006 and closed.code == 3006


async def test_6_keepalive_is_ignored(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await ws.send_str(json.dumps({"type": "KeepAlive"}))
    await assert_silent(ws)
    await ws.close()


async def test_6_bad_text_frames_get_3006(emu):
    e = await emu()
    cases = {
        json.dumps({"type": "Foo"}): "Invalid Message Type: Foo",
        "not json": "Invalid JSON: not json",
        "[]": "Invalid Message: []",
        json.dumps({"kind": "Terminate"}): 'Invalid Message: {"kind": "Terminate"}',
    }
    for frame, text in cases.items():
        ws = await e.aai()
        await begun(ws)
        await ws.send_str(frame)
        msgs, closed = await recv_until_closed(ws)
        assert msgs == [{"type": "Error", "error_code": 3006, "error": text}]
        assert closed.code == 3006


# --- 7. Turn semantics ----------------------------------------------------------------------------------


async def test_7_turn_sequence(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&format_turns=true&emu_rate_check=off")
    await begun(ws)
    await send_audio(ws, silence(0.3) + tone(1.0) + silence(1.0) + tone(0.3) + silence(0.7))
    turns = await recv_until(ws, lambda m: m.get("turn_order") == 1 and m.get("turn_is_formatted") is True)
    assert all(t["type"] == "Turn" and list(t)[-1] == "type" for t in turns)
    first = [t for t in turns if t["turn_order"] == 0]
    assert [(t["transcript"], t["end_of_turn"], t["turn_is_formatted"]) for t in first] == [
        ("", False, False),
        ("alpha", False, False),
        ("alpha bravo", False, False),
        ("alpha bravo charlie", False, False),  # the pause finalises the last word
        ("alpha bravo charlie", True, False),
        ("Alpha bravo charlie.", True, True),
    ]
    assert [w["word_is_final"] for w in first[2]["words"]] == [True, True, False]
    assert first[0]["words"] == [{"start": 300, "end": 600, "text": "alpha", "confidence": 0.8, "word_is_final": False}]
    assert [(w["start"], w["end"]) for w in first[4]["words"]] == [(300, 600), (600, 900), (900, 1200)]
    assert [t["utterance"] for t in first] == ["", "", "", "", "alpha bravo charlie", ""]
    eot = first[4]
    assert eot["end_of_turn_confidence"] >= 0.4 and first[0]["end_of_turn_confidence"] < 0.4
    assert [w["text"] for w in first[5]["words"]] == ["Alpha", "bravo", "charlie."]
    second = [t for t in turns if t["turn_order"] == 1]
    assert second[-2]["transcript"] == "delta" and second[-2]["end_of_turn"] is True
    await ws.close()


async def test_7_silence_produces_no_turns_and_max_turn_silence_ends_turns(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&end_of_turn_confidence_threshold=1&max_turn_silence=800&emu_rate_check=off")
    await begun(ws)
    await send_audio(ws, silence(3.0))
    await assert_silent(ws)
    await send_audio(ws, tone(0.3) + silence(0.7))
    await recv_until(ws, lambda m: m["transcript"] == "alpha")
    await assert_silent(ws)  # 700 ms < max_turn_silence and the threshold is 1
    await send_audio(ws, silence(0.1))
    eot = await recv_json(ws)
    assert eot["end_of_turn"] is True and eot["end_of_turn_confidence"] == 1.0
    await ws.close()


# --- 8. Termination -------------------------------------------------------------------------------------


async def test_8_termination_has_integer_durations(emu):
    e = await emu()
    ws = await e.aai()
    await begun(ws)
    await send_audio(ws, silence(1.6))
    await asyncio.sleep(0.7)
    await ws.send_str(json.dumps({"type": "Terminate"}))
    msgs, _ = await recv_until_closed(ws)
    term = msgs[-1]
    assert term["type"] == "Termination"
    assert term["audio_duration_seconds"] == 2  # 1.6 s rounds half-up
    assert term["session_duration_seconds"] in (1, 2)  # ~0.7 s of wall time (more on a loaded machine)
    assert all(isinstance(term[k], int) for k in ("audio_duration_seconds", "session_duration_seconds"))


# --- 9. session cap and inactivity ----------------------------------------------------------------------


async def test_9_session_cap(emu):
    e = await emu(assemblyai=AssemblyAIOptions(max_session_seconds=0.3))
    assert AssemblyAIOptions().max_session_seconds == 10800
    ws = await e.aai()
    begin = await begun(ws)
    assert begin["expires_at"] - time.time() <= 1.5
    await send_audio(ws, tone(0.3))
    msgs, closed = await recv_until_closed(ws)
    text = "Session Expired: Maximum session duration exceeded"
    assert [m["type"] for m in msgs] == ["Turn", "Turn", "Termination", "Error"]
    assert msgs[1]["end_of_turn"] is True
    assert msgs[-1] == {"type": "Error", "error_code": 3008, "error": text}
    assert (closed.code, closed.reason) == (3008, text)


async def test_9_inactivity_timeout(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&inactivity_timeout=5&emu_idle_timeout_seconds=0.3")
    await begun(ws)
    for _ in range(3):  # activity (audio or a KeepAlive) keeps it open
        await asyncio.sleep(0.15)
        await ws.send_str(json.dumps({"type": "KeepAlive"}))
    msgs, closed = await recv_until_closed(ws)
    assert [m["type"] for m in msgs] == ["Termination"]
    assert (closed.code, closed.reason) == (1000, "Session Ended")
    rec = await e.recorder.sessions[-1].wait_ended()
    assert rec.ended_at >= 0.7
    # inactivity_timeout from the query
    e2 = await emu()
    ws = await e2.aai(AAI_QUERY + "&inactivity_timeout=5")
    await begun(ws)
    await assert_silent(ws, 0.2)
    await ws.close()


# --- 10. failure injection ------------------------------------------------------------------------------


async def test_10_error_3005_after_begin(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_error=3005")
    msgs, closed = await recv_until_closed(ws)
    assert [m["type"] for m in msgs] == ["Begin", "Error"]
    assert msgs[1] == {"type": "Error", "error_code": 3005, "error": "Session Cancelled: An error occurred"}
    assert (closed.code, closed.reason) == (3005, "Session Cancelled: An error occurred")


async def test_10_error_3009_and_1008_instead_of_begin(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_error=too_many_sessions")
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [
        {"type": "Error", "error_code": 3009, "error": "Unauthorized Connection: Too many concurrent sessions"}
    ]
    assert closed.code == 3009
    ws = await e.aai(AAI_QUERY + "&emu_error=1008&emu_error_message=Unauthorized%20Connection:%20Insufficient%20funds")
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [{"type": "Error", "error_code": 1008, "error": "Unauthorized Connection: Insufficient funds"}]
    assert (closed.code, closed.reason) == (1008, GENERIC)


async def test_10_error_after_frames(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_error=3005&emu_error_after_frames=2")
    await begun(ws)
    await ws.send_bytes(silence(0.1))
    await assert_silent(ws, 0.05)
    await ws.send_bytes(silence(0.1))
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1]["error_code"] == 3005 and closed.code == 3005


async def test_10_legacy_codes(emu):
    e = await emu()
    ws = await e.aai(AAI_QUERY + "&emu_legacy_codes=1")
    await begun(ws)
    await ws.send_bytes(silence(0.01))
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1]["error_code"] == 3005 and closed.code == 3005
    e2 = await emu(assemblyai=AssemblyAIOptions(legacy_codes=True))
    ws = await e2.aai(AAI_QUERY + "&emu_error=3009")
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1]["error_code"] == 1008 and (closed.code, closed.reason) == (1008, GENERIC)


# --- 11. token endpoint ---------------------------------------------------------------------------------


async def test_11_token_endpoint(emu):
    e = await emu()
    status, body = await mint(e, "expires_in_seconds=60")
    assert status == 200 and body["expires_in_seconds"] == 60 and len(body["token"]) > 40
    for bad in ("", "expires_in_seconds=0", "expires_in_seconds=601", "expires_in_seconds=x",
                "expires_in_seconds=60&max_session_duration_seconds=59",
                "expires_in_seconds=60&max_session_duration_seconds=10801"):  # fmt: skip
        status, body = await mint(e, bad)
        assert status == 400 and isinstance(body["error"], str), bad
    status, body = await mint(e, key="nope")
    assert status == 401 and "error" in body
    status, body = await mint(e, key=None)
    assert status == 401


async def test_11_tokens_are_single_use_unless_configured(emu):
    e = await emu()
    _, body = await mint(e)
    ws = await e.aai(key=body["token"])
    await begun(ws)
    await ws.close()
    ws = await e.aai(key=body["token"])
    msgs, closed = await recv_until_closed(ws)
    assert msgs[0]["error_code"] == 1008 and closed.code == 1008
    e2 = await emu(assemblyai=AssemblyAIOptions(single_use_tokens=False))
    _, body = await mint(e2)
    for _ in range(2):
        ws = await e2.aai(key=body["token"])
        await begun(ws)
        await ws.close()


async def test_11_tokens_expire(emu):
    e = await emu()
    _, body = await mint(e, "expires_in_seconds=1")
    await asyncio.sleep(1.05)
    ws = await e.aai(key=body["token"])
    msgs, _closed = await recv_until_closed(ws)
    assert msgs[0]["error_code"] == 1008


# --- 12. pings ------------------------------------------------------------------------------------------


async def test_12_pings_are_answered(emu):
    e = await emu()
    for connect in (e.aai, e.el):
        ws = await connect(autoping=False)
        await ws.ping(b"are you there")
        while True:
            msg = await ws.receive(timeout=2)
            if msg.type is WSMsgType.PONG:
                assert msg.data == b"are you there"
                break
            assert msg.type is WSMsgType.TEXT
        await ws.close()
