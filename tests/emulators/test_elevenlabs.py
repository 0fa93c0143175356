"""ElevenLabs emulator: one or more tests per item of the emulator's duties (docs/contract.md#emulators)."""

from __future__ import annotations

import json
import re

from sttgate.emulators.elevenlabs import ElevenLabsOptions
from sttgate.emulators.transcriber import pcm16_to_mulaw
from tests.support.emulator_client import (
    EL_KEY,
    EL_QUERY,
    Closed,
    assert_silent,
    el_chunk,
    el_commit,
    frames,
    recv,
    recv_json,
    recv_until,
    recv_until_closed,
    silence,
    tone,
)

AUTH_ERROR = {"message_type": "auth_error", "error": "You must be authenticated to use this endpoint."}


async def started(ws) -> dict:
    msg = await recv_json(ws)
    assert msg["message_type"] == "session_started", msg
    return msg


# --- 1. endpoints ---------------------------------------------------------------------------------------


async def test_1_accepts_upgrade_without_subprotocol(emu):
    e = await emu()
    ws = await e.el()
    assert ws.protocol is None
    await started(ws)
    await ws.close()


async def test_1_legacy_beta_path_and_prefixed_path(emu):
    e = await emu()
    for path in ("/v1/speech-to-text/realtime-beta", "/elevenlabs/v1/speech-to-text/realtime"):
        ws = await e.el("model_id=scribe_v2_realtime&encoding=pcm_16000&sample_rate=16000", path=path)
        msg = await started(ws)
        assert msg["config"]["audio_format"] == "pcm_16000"
        await ws.close()
    assert [r.path for r in e.recorder.sessions] == [
        "/v1/speech-to-text/realtime-beta",
        "/elevenlabs/v1/speech-to-text/realtime",
    ]


# --- 2. authentication after the 101 --------------------------------------------------------------------


async def test_2_bad_or_missing_key_gets_auth_error_then_close_1000_empty(emu):
    e = await emu()
    for key in ("wrong-key", None):
        ws = await e.el(key=key)  # the upgrade itself succeeds
        msgs, closed = await recv_until_closed(ws)
        assert msgs == [AUTH_ERROR]
        assert (closed.code, closed.reason) == (1000, "")
    rec = e.recorder.sessions[-1]
    assert rec.authenticated is False and rec.accepted and rec.close_code == 1000 and rec.closed_by == "emulator"


async def test_2_token_in_query_is_single_use(emu):
    e = await emu()
    async with e.http.post(e.http_url("/v1/single-use-token/realtime_scribe"), headers={"xi-api-key": EL_KEY}) as r:
        token = (await r.json())["token"]
    ws = await e.el(EL_QUERY + f"&token={token}", key=None)
    await started(ws)
    await ws.close()
    ws = await e.el(EL_QUERY + f"&token={token}", key=None)
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [AUTH_ERROR] and closed.code == 1000


# --- 3. query parsing -----------------------------------------------------------------------------------


async def test_3_repeated_keys_booleans_and_unknown_params(emu):
    e = await emu()
    ws = await e.el(
        "model_id=scribe_v2_realtime&audio_format=ulaw_8000&commit_strategy=vad&keyterms=Eleven%20Labs&keyterms=Scribe"
        "&include_timestamps=true&enable_logging=false&no_verbatim=true&some_future_param=1&secondary_languages=deu"
        "&vad_silence_threshold_secs=0.3&min_speech_duration_ms=50"
    )
    cfg = (await started(ws))["config"]
    assert cfg["keyterms"] == ["Eleven Labs", "Scribe"]
    assert cfg["include_timestamps"] is True and cfg["disable_logging"] is True and cfg["no_verbatim"] is True
    assert cfg["audio_format"] == "ulaw_8000" and cfg["sample_rate"] == 8000
    assert cfg["vad_commit_strategy"] is True and cfg["vad_silence_threshold_secs"] == 0.3
    assert cfg["secondary_languages"] == ["de"]
    await ws.close()


async def test_3_missing_model_id_gets_invalid_request_then_close(emu):
    e = await emu()
    ws = await e.el("audio_format=pcm_16000")
    msgs, closed = await recv_until_closed(ws)
    assert [m["message_type"] for m in msgs] == ["invalid_request"]
    assert "model_id" in msgs[0]["error"]
    assert closed.code == 1000


async def test_3_invalid_values_get_invalid_request(emu):
    e = await emu()
    for bad in (
        "audio_format=pcm_12345",
        "commit_strategy=sometimes",
        "vad_silence_threshold_secs=5",
        "vad_threshold=0.95",
        "min_speech_duration_ms=10",
        "include_timestamps=maybe",
        "language_code=e1",
        "model_id=scribe_v9",
    ):
        ws = await e.el(f"model_id=scribe_v2_realtime&{bad}")
        msgs, closed = await recv_until_closed(ws)
        assert [m["message_type"] for m in msgs] == ["invalid_request"], bad
        assert closed.code == 1000


# --- 4. session_started ----------------------------------------------------------------------------------


async def test_4_session_started_wire_shape(emu):
    e = await emu()
    ws = await e.el("model_id=scribe_v2_realtime&audio_format=pcm_24000&language_code=eng")
    msg = await started(ws)
    assert re.fullmatch(r"[0-9a-f]{32}", msg["session_id"])
    assert msg["config"] == {
        "sample_rate": 24000,
        "audio_format": "pcm_24000",
        "language_code": "en",
        "secondary_languages": [],
        "timestamps_granularity": "word",
        "vad_commit_strategy": False,
        "vad_silence_threshold_secs": 1.5,
        "vad_threshold": 0.4,
        "min_speech_duration_ms": 100,
        "min_silence_duration_ms": 100,
        "max_tokens_to_recompute": 5,
        "model_id": "scribe_v2_realtime",
        "disable_logging": False,
        "include_timestamps": False,
        "include_language_detection": False,
        "filter_background_audio": False,
        "keyterms": [],
        "no_verbatim": False,
        "entity_detection": None,
    }
    assert e.recorder.sessions[-1].id == msg["session_id"]
    await ws.close()
    ws = await e.el("model_id=scribe_v2_realtime")
    assert (await started(ws))["config"]["language_code"] is None
    await ws.close()


# --- 5. input frames ------------------------------------------------------------------------------------


async def test_5_audio_duration_counted_from_audio_format(emu):
    e = await emu()
    ws = await e.el("model_id=scribe_v2_realtime&audio_format=ulaw_8000")
    await started(ws)
    mulaw = pcm16_to_mulaw(silence(0.5, 8000))
    await ws.send_str(el_chunk(mulaw, sample_rate=8000))
    await ws.send_str(el_chunk(silence(0.25, 8000)[:2000], sample_rate=8000))  # 2000 μ-law bytes = 0.25 s
    rec = await e.recorder.wait_for_session(lambda r: r.audio_bytes >= 6000)
    assert rec.audio_bytes == 6000 and abs(rec.audio_seconds - 0.75) < 1e-9
    await ws.close()


async def test_5_previous_text_first_chunk_only_null_is_absent(emu):
    e = await emu()
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(silence(0.1), previous_text="Earlier we said"))
    await ws.send_str(el_chunk(silence(0.1), previous_text=None))  # the Python SDK always sends null
    await assert_silent(ws)
    await ws.send_str(el_chunk(silence(0.1), previous_text="too late"))
    msg = await recv_json(ws)
    assert msg["message_type"] == "input_error" and "previous_text" in msg["error"]
    await ws.close()


async def test_5_unknown_type_and_malformed_frames_get_input_error_and_stay_open(emu):
    e = await emu()
    ws = await e.el()
    await started(ws)
    await ws.send_str(json.dumps({"message_type": "commit"}))
    assert await recv_json(ws) == {"message_type": "input_error", "error": "Unexpected message type: commit"}
    await ws.send_str(json.dumps({"message_type": "session_config", "config": {}}))
    assert await recv_json(ws) == {"message_type": "input_error", "error": "Unexpected message type: session_config"}
    malformed = {"message_type": "input_error", "error": "Message must be a valid protocol message"}
    for bad in ("{not json", "[1, 2]", json.dumps({"audio_base_64": "AAAA"}), json.dumps({"message_type": 5})):
        await ws.send_str(bad)
        assert await recv_json(ws) == malformed, bad
    await ws.send_str(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": 12, "commit": False}))
    assert await recv_json(ws) == malformed
    await ws.send_bytes(silence(0.1))  # raw binary audio is not the protocol
    assert await recv_json(ws) == malformed
    # still open and working
    await ws.send_str(el_chunk(tone(0.4)))
    await ws.send_str(el_commit())
    msgs = await recv_until(ws, lambda m: m["message_type"] == "committed_transcript")
    assert msgs[-1]["text"] == "alpha"
    await ws.close()


# --- 6. partial transcripts ----------------------------------------------------------------------------


async def test_6_partials_are_cumulative_and_driven_by_voiced_audio(emu):
    e = await emu()
    ws = await e.el()
    await started(ws)
    for f in frames(silence(0.5)):  # silence: no words
        await ws.send_str(el_chunk(f))
    await assert_silent(ws)
    for f in frames(tone(1.0)):
        await ws.send_str(el_chunk(f))
    partials = [await recv_json(ws) for _ in range(3)]
    assert partials == [
        {"message_type": "partial_transcript", "text": "alpha"},
        {"message_type": "partial_transcript", "text": "alpha bravo"},
        {"message_type": "partial_transcript", "text": "alpha bravo charlie"},
    ]
    await ws.close()


async def test_6_partials_can_be_held_until_enough_audio(emu):
    e = await emu(elevenlabs=ElevenLabsOptions(partial_min_audio_seconds=2.0))
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(tone(0.9)))
    await assert_silent(ws)
    await ws.send_str(el_chunk(silence(1.0)))
    await ws.send_str(el_chunk(tone(0.3)))
    assert await recv_json(ws) == {"message_type": "partial_transcript", "text": "alpha bravo charlie delta"}
    await ws.close()


# --- 7. commits -----------------------------------------------------------------------------------------


async def test_7_commit_with_too_little_audio_is_throttled(emu):
    e = await emu()
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(silence(0.2)))
    await ws.send_str(el_commit())
    assert await recv_json(ws) == {
        "message_type": "commit_throttled",
        "error": "Commit request ignored: only 0.20s of uncommitted audio. "
        "You need at least 0.3s of uncommitted audio before committing.",
    }
    await ws.send_str(el_chunk(silence(0.2)))  # the throttled audio stays uncommitted: 0.4 s now
    await ws.send_str(el_commit())
    assert await recv_json(ws) == {"message_type": "committed_transcript", "text": ""}
    await ws.close()


async def test_7_commit_throttled_can_close(emu):
    e = await emu()
    ws = await e.el(EL_QUERY + "&emu_commit_throttled_close=1")
    await started(ws)
    await ws.send_str(el_commit())
    msgs, closed = await recv_until_closed(ws)
    assert [m["message_type"] for m in msgs] == ["commit_throttled"]
    assert (closed.code, closed.reason) == (1000, "commit_throttled")


async def test_7_commit_sends_committed_then_timestamps_and_resets_segment(emu):
    e = await emu()
    ws = await e.el(EL_QUERY.replace("include_timestamps=false", "include_timestamps=true") + "&language_code=en")
    await started(ws)
    await ws.send_str(el_chunk(tone(0.5) + silence(0.2), commit=True))  # audio and commit in one chunk
    msgs = await recv_until(ws, lambda m: m["message_type"] == "committed_transcript_with_timestamps")
    assert [m["message_type"] for m in msgs] == [
        "partial_transcript",  # alpha at 0.3 s
        "partial_transcript",  # bravo: the 0.2 s left over when the tone stops
        "committed_transcript",
        "committed_transcript_with_timestamps",
    ]
    assert msgs[2]["text"] == "alpha bravo"
    ts = msgs[3]
    assert ts["text"] == "alpha bravo" and ts["language_code"] == "en"
    assert [(w["text"], w["type"]) for w in ts["words"]] == [("alpha", "word"), (" ", "spacing"), ("bravo", "word")]
    alpha, space, bravo = ts["words"]
    assert (alpha["start"], alpha["end"]) == (0.0, 0.3)
    assert (space["start"], space["end"]) == (0.3, 0.3)
    assert (bravo["start"], bravo["end"]) == (0.3, 0.5)
    assert alpha["logprob"] <= 0
    # the segment was reset: the next commit holds only new words
    await ws.send_str(el_chunk(tone(0.3)))
    await ws.send_str(el_commit())
    msgs = await recv_until(ws, lambda m: m["message_type"] == "committed_transcript")
    assert msgs[-1]["text"] == "charlie"
    await ws.close()


# --- 8. VAD and 90 s auto-commit ------------------------------------------------------------------------


async def test_8_vad_auto_commits_after_silence(emu):
    e = await emu()
    ws = await e.el("model_id=scribe_v2_realtime&commit_strategy=vad&vad_silence_threshold_secs=0.5")
    await started(ws)
    for f in frames(tone(0.6) + silence(0.4)):
        await ws.send_str(el_chunk(f))
    msgs = await recv_until(ws, lambda m: m["text"] == "alpha bravo")
    assert all(m["message_type"] == "partial_transcript" for m in msgs)
    await assert_silent(ws)  # 0.4 s of silence < 0.5 s threshold
    await ws.send_str(el_chunk(silence(0.1)))
    assert await recv_json(ws) == {"message_type": "committed_transcript", "text": "alpha bravo"}
    for f in frames(silence(2.0)):  # no speech since: no further commit
        await ws.send_str(el_chunk(f))
    await assert_silent(ws)
    await ws.close()


async def test_8_manual_mode_auto_commits_uncommitted_audio(emu):
    e = await emu(elevenlabs=ElevenLabsOptions(auto_commit_seconds=1.0))
    ws = await e.el()
    await started(ws)
    for f in frames(silence(0.7) + tone(0.3)):
        await ws.send_str(el_chunk(f))
    msgs = await recv_until(ws, lambda m: m["message_type"] == "committed_transcript")
    assert msgs == [
        {"message_type": "partial_transcript", "text": "alpha"},
        {"message_type": "committed_transcript", "text": "alpha"},
    ]
    # the knob overrides per session
    ws2 = await e.el(EL_QUERY + "&emu_auto_commit_seconds=0.5")
    await started(ws2)
    await ws2.send_str(el_chunk(silence(0.5)))
    assert await recv_json(ws2) == {"message_type": "committed_transcript", "text": ""}
    await ws.close()
    await ws2.close()


async def test_8_default_auto_commit_is_90_seconds(emu):
    e = await emu()
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(silence(89.9)))
    await assert_silent(ws)
    await ws.send_str(el_chunk(silence(0.1)))
    assert await recv_json(ws) == {"message_type": "committed_transcript", "text": ""}
    await ws.close()


# --- 9. no terminate/usage message; client close -------------------------------------------------------


async def test_9_client_close_just_closes(emu):
    e = await emu()
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(tone(0.4)))
    await recv_json(ws)  # partial
    await ws.close(code=1000, message=b"User ended conversation")
    rec = await e.recorder.sessions[-1].wait_ended()
    assert (rec.close_code, rec.close_reason, rec.closed_by) == (1000, "User ended conversation", "client")
    sent = [m["message_type"] for m in rec.json_out()]
    assert sent == ["session_started", "partial_transcript"]


# --- 10. idle -------------------------------------------------------------------------------------------


async def test_10_idle_without_audio_sends_insufficient_audio_activity_and_closes(emu):
    e = await emu(elevenlabs=ElevenLabsOptions(idle_timeout_seconds=0.3))
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(silence(0.1)))  # audio (even silent) keeps it alive
    await ws.send_str(el_commit())  # a commit-only chunk is not audio
    await ws.ping()
    msgs, closed = await recv_until_closed(ws, timeout=2)
    assert [m["message_type"] for m in msgs] == ["commit_throttled", "insufficient_audio_activity"]
    assert closed.code == 1000
    rec = await e.recorder.sessions[-1].wait_ended()
    assert 0.29 < rec.ended_at < 1.5


async def test_10_idle_default_is_15_seconds_and_knob_overrides(emu):
    e = await emu()

    assert ElevenLabsOptions().idle_timeout_seconds == 15.0
    ws = await e.el(EL_QUERY + "&emu_idle_timeout_seconds=0.2")
    await started(ws)
    msgs, closed = await recv_until_closed(ws)
    assert msgs[0]["message_type"] == "insufficient_audio_activity" and closed.code == 1000


# --- 11. failure injection ------------------------------------------------------------------------------


async def test_11_quota_exceeded_right_after_session_started(emu):
    e = await emu()
    ws = await e.el(EL_QUERY + "&emu_error=quota_exceeded")
    msgs, closed = await recv_until_closed(ws)
    assert [m["message_type"] for m in msgs] == ["session_started", "quota_exceeded"]
    assert msgs[1] == {"message_type": "quota_exceeded", "error": "You have exceeded your quota."}
    assert closed.code == 1000


async def test_11_any_error_type_at_any_time_with_configurable_close(emu):
    e = await emu()
    q = EL_QUERY + "&emu_error=rate_limited&emu_error_after_frames=2&emu_close_code=4003&emu_close_reason=slow%20down"
    ws = await e.el(q)
    await started(ws)
    await ws.send_str(el_chunk(silence(0.1)))
    await assert_silent(ws, 0.05)
    await ws.send_str(el_chunk(silence(0.1)))
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [
        {"message_type": "rate_limited", "error": "Rate limit exceeded: too many requests in a short period."}
    ]
    assert (closed.code, closed.reason) == (4003, "slow down")

    ws = await e.el(EL_QUERY + "&emu_error=transcriber_error&emu_error_after_seconds=0.1&emu_error_message=boom")
    msgs, closed = await recv_until_closed(ws)
    assert msgs[-1] == {"message_type": "transcriber_error", "error": "boom"}
    assert (closed.code, closed.reason) == (1000, "transcriber_error")

    ws = await e.el(EL_QUERY + "&emu_error=auth_error")  # instead of session_started
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [AUTH_ERROR] and (closed.code, closed.reason) == (1000, "")

    ws = await e.el(EL_QUERY + "&emu_error=input_error&emu_error_message=nope")  # non-fatal
    await started(ws)
    assert await recv_json(ws) == {"message_type": "input_error", "error": "nope"}
    await assert_silent(ws)
    await ws.close()


# --- 12. optional fidelity -------------------------------------------------------------------------------


async def test_12_empty_commit_for_silence_and_echo_partial(emu):
    e = await emu(elevenlabs=ElevenLabsOptions(echo_partial_after_commit=True))
    ws = await e.el()
    await started(ws)
    await ws.send_str(el_chunk(silence(0.5), commit=True))
    assert await recv_json(ws) == {"message_type": "committed_transcript", "text": ""}
    await assert_silent(ws)  # no echo partial for an empty commit
    await ws.send_str(el_chunk(tone(0.3), commit=True))
    msgs = [await recv_json(ws) for _ in range(3)]
    assert msgs == [
        {"message_type": "partial_transcript", "text": "alpha"},
        {"message_type": "committed_transcript", "text": "alpha"},
        {"message_type": "partial_transcript", "text": "alpha"},
    ]
    await ws.close()


# --- 13. token endpoint ---------------------------------------------------------------------------------


async def test_13_token_endpoint(emu):
    e = await emu()
    url = e.http_url("/v1/single-use-token/realtime_scribe")
    async with e.http.post(url, headers={"xi-api-key": EL_KEY}) as r:
        assert r.status == 200
        body = await r.json()
    assert re.fullmatch(r"sutkn_[0-9a-f]+", body["token"])
    async with e.http.post(url, headers={"xi-api-key": "nope"}) as r:
        assert r.status == 401
        assert (await r.json())["detail"]["status"] == "invalid_api_key"
    async with e.http.post(url) as r:
        assert r.status == 401
    async with e.http.post(e.http_url("/v1/single-use-token/bogus"), headers={"xi-api-key": EL_KEY}) as r:
        assert r.status == 422
    # a token of another type does not open a realtime session
    async with e.http.post(e.http_url("/v1/single-use-token/tts_websocket"), headers={"xi-api-key": EL_KEY}) as r:
        other = (await r.json())["token"]
    ws = await e.el(EL_QUERY + f"&token={other}", key=None)
    assert (await recv(ws)) == AUTH_ERROR


async def test_13_tokens_expire(emu):
    e = await emu(elevenlabs=ElevenLabsOptions(token_ttl_seconds=0.05))

    assert ElevenLabsOptions().token_ttl_seconds == 900.0
    async with e.http.post(e.http_url("/v1/single-use-token/realtime_scribe"), headers={"xi-api-key": EL_KEY}) as r:
        token = (await r.json())["token"]
    import asyncio

    await asyncio.sleep(0.1)
    ws = await e.el(EL_QUERY + f"&token={token}", key=None)
    msgs, closed = await recv_until_closed(ws)
    assert msgs == [AUTH_ERROR]
    assert isinstance(closed, Closed)
