"""Deepgram emulator: one or more tests per numbered behaviour of :mod:`sttgate.emulators.deepgram`."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from sttgate.emulators.deepgram import ALAW_TO_LINEAR, NET0001, DeepgramOptions, alaw_encode
from sttgate.emulators.transcriber import pcm16_to_mulaw
from tests.support.emulator_client import Closed, assert_silent, frames, recv, recv_json, recv_until, silence, tone

DG_KEY = "emulator-deepgram-key"
PATH = "/v1/listen"
PCM = "encoding=linear16&sample_rate=16000"


async def connect(e, query: str = PCM, *, key: str | None = DG_KEY, scheme: str = "Token", path: str = PATH, **kw):
    headers = dict(kw.pop("headers", {}) or {})
    if key is not None:
        headers["Authorization"] = f"{scheme} {key}"
    return await e.http.ws_connect(e.ws_url(path, query), headers=headers, **kw)


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}


async def refused(e, query: str = PCM, **kw) -> tuple[int, dict, aiohttp.ClientResponse]:
    """A refused upgrade: its status, JSON body and response (headers)."""
    key = kw.get("key", DG_KEY)
    headers = {**UPGRADE, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if key is not None:
        headers["Authorization"] = f"{kw.get('scheme', 'Token')} {key}"
    async with e.http.get(e.http_url(PATH, query), headers=headers) as r:
        assert r.status != 101
        return r.status, await r.json(), r


async def send(ws, pcm: bytes, ms: int = 100, rate: int = 16000, bps: int = 2, channels: int = 1) -> None:
    for f in frames(pcm, ms, rate, bps * channels):
        await ws.send_bytes(f)


async def close_stream(ws, timeout: float = 5.0) -> tuple[list[dict], Closed]:
    await ws.send_str('{"type": "CloseStream"}')
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            m = await recv(ws)
            if isinstance(m, Closed):
                return out, m
            out.append(m)


def finals(messages: list[dict]) -> list[str]:
    return [
        m["channel"]["alternatives"][0]["transcript"]
        for m in messages
        if m["type"] == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"]
    ]


# --- 1. endpoint and dg-request-id ----------------------------------------------------------------------


async def test_1_v1_listen_under_any_prefix_with_a_request_id(emu):
    e = await emu()
    for path in (PATH, "/deepgram/v1/listen"):
        ws = await connect(e, path=path)
        request_id = ws._response.headers["dg-request-id"]
        uuid.UUID(request_id)
        await send(ws, tone(0.5))
        messages, closed = await close_stream(ws)
        assert closed.code == 1000
        assert {m.get("request_id") or m["metadata"]["request_id"] for m in messages} == {request_id}


# --- 2. authentication before the upgrade ---------------------------------------------------------------


async def test_2_bad_or_missing_credential_is_http_401_with_dg_error(emu):
    e = await emu()
    for kw in ({"key": "wrong"}, {"key": None}, {"scheme": "Basic"}):
        status, body, err = await refused(e, **kw)
        assert status == 401
        assert err.headers["dg-error"] == "Invalid credentials."
        assert body["err_code"] == "INVALID_AUTH" and body["err_msg"] == "Invalid credentials."
        assert body["request_id"] == err.headers["dg-request-id"]
    assert all(not r.accepted for r in e.recorder.sessions)


async def test_2_schemes_are_case_insensitive_and_subprotocols_carry_the_key(emu):
    e = await emu()
    for scheme in ("token", "TOKEN", "Bearer"):
        ws = await connect(e, scheme=scheme)
        await ws.close()
    ws = await connect(e, key=None, protocols=("token", DG_KEY))
    assert ws.protocol == "token"
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await connect(e, key=None, protocols=("token", "wrong"))
    assert exc.value.status == 401


# --- 3. handshake refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(402, "ASR_PAYMENT_REQUIRED"), (403, "INSUFFICIENT_PERMISSIONS"), (429, "TOO_MANY_REQUESTS")]
)
async def test_3_injected_refusals(emu, status, code):
    e = await emu()
    query = f"{PCM}&emu_handshake_status={status}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await connect(e, query)
    assert exc.value.status == status and exc.value.headers is not None and exc.value.headers["dg-error"]
    _, body, _ = await refused(e, query)
    assert body["err_code"] == code


@pytest.mark.parametrize(
    "query",
    [
        "encoding=linear16",
        "model=nova-3&keywords=a:2",
        "diarize_model=v2",
        "model=nope",
        "language=english",
        "encoding=wav&sample_rate=16000",
        "encoding=linear16&sample_rate=abc",
        "interim_results=maybe",
    ],
)
async def test_3_invalid_parameters_are_400(emu, query):
    e = await emu()
    status, body, err = await refused(e, query)
    assert status == 400 and body["err_msg"] == err.headers["dg-error"]


async def test_3_concurrency_limit_is_429(emu):
    e = await emu(deepgram=DeepgramOptions(max_concurrent=2))
    open_ = [await connect(e), await connect(e)]
    status, body, _ = await refused(e)
    assert status == 429 and body["err_code"] == "TOO_MANY_REQUESTS"
    for ws in open_:
        await ws.close()


# --- 4. query parsing ------------------------------------------------------------------------------------


async def test_4_booleans_any_case_repeated_keys_and_endpointing_false(emu):
    e = await emu()
    ws = await connect(e, f"{PCM}&interim_results=True&endpointing=false&keyterm=a&keyterm=b+c&tag=x&unknown=1")
    await send(ws, tone(0.9) + silence(0.5))
    messages = await recv_until(ws, lambda m: m["type"] == "Results")
    assert messages[0]["is_final"] is False  # interim results on; no endpointing final in the pause
    messages, _ = await close_stream(ws)
    assert [m["speech_final"] for m in messages if m["type"] == "Results" and m["is_final"]] == [True]
    assert e.recorder.last.query.count(("keyterm", "b c")) == 1


# --- 5. binary audio -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "audio", "seconds"),
    [
        (PCM, tone(1.0), 1.0),
        ("encoding=linear16&sample_rate=16000&channels=2", tone(1.0) * 2, 1.0),
        ("encoding=mulaw&sample_rate=8000", pcm16_to_mulaw(tone(1.0, 8000)), 1.0),
        ("encoding=alaw&sample_rate=8000", b"\xd5" * 12000, 1.5),
        ("encoding=linear32&sample_rate=16000", b"\0" * 64000, 1.0),
    ],
)
async def test_5_raw_audio_is_timed_by_its_format(emu, query, audio, seconds):
    e = await emu()
    ws = await connect(e, query)
    for i in range(0, len(audio), 4000):
        await ws.send_bytes(audio[i : i + 4000])
    messages, _ = await close_stream(ws)
    assert messages[-1]["type"] == "Metadata" and messages[-1]["duration"] == seconds
    assert e.recorder.last.audio_seconds == pytest.approx(seconds)


async def test_5_mulaw_and_alaw_are_transcribed(emu):
    e = await emu()
    assert abs(ALAW_TO_LINEAR[alaw_encode(8000)] - 8000) < 300
    for query, audio in (
        ("encoding=mulaw&sample_rate=8000", pcm16_to_mulaw(tone(1.0, 8000))),
        ("encoding=alaw&sample_rate=8000", bytes(alaw_encode(s) for s in memoryview(tone(1.0, 8000)).cast("h"))),
    ):
        ws = await connect(e, query)
        await send(ws, audio, rate=8000, bps=1)
        messages, _ = await close_stream(ws)
        assert " ".join(finals(messages)) == "alpha bravo charlie"


async def test_5_wav_container_is_decoded_and_garbage_closes_1008(emu):
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone(0.6))
    e = await emu()
    ws = await connect(e, "")
    await ws.send_bytes(buf.getvalue()[:30])
    await ws.send_bytes(buf.getvalue()[30:])
    messages, _ = await close_stream(ws)
    assert finals(messages) == ["alpha bravo"] and messages[-1]["duration"] == 0.6
    ws = await connect(e, "")
    await ws.send_bytes(b"this is not audio at all")
    m = await recv(ws)
    assert isinstance(m, Closed) and (m.code, m.reason) == (1008, "DATA-0000")


async def test_5_empty_frames_are_ignored_or_close_in_legacy_mode(emu):
    e = await emu()
    ws = await connect(e)
    await ws.send_bytes(b"")
    await assert_silent(ws)
    await ws.close()
    e = await emu(deepgram=DeepgramOptions(empty_frame_closes=True))
    ws = await connect(e)
    await ws.send_bytes(b"")
    m = await recv_json(ws)
    assert m["type"] == "Metadata"


# --- 6. text messages ------------------------------------------------------------------------------------


async def test_6_keepalive_finalize_configure_and_schema_errors(emu):
    e = await emu()
    ws = await connect(e, f"{PCM}&model=nova-3&endpointing=false")
    await ws.send_str('{"type": "KeepAlive"}')
    await assert_silent(ws)
    await send(ws, tone(0.6))
    await ws.send_str('{"type": "Finalize"}')
    final = await recv_json(ws)
    assert final["is_final"] and final["from_finalize"] is True
    assert final["channel"]["alternatives"][0]["transcript"] == "alpha bravo"
    await ws.send_str('{"type": "Configure", "keyterms": ["Deepgram"]}')
    assert (await recv_json(ws)) == {"type": "ConfigureSuccess", "request_id": final["metadata"]["request_id"],
                                     "keyterms": ["Deepgram"]}  # fmt: skip
    await ws.send_str('{"type": "Shout"}')
    error = await recv_json(ws)
    assert (error["type"], error["variant"], error["message"]) == ("Error", "SchemaError", '{"type": "Shout"}')
    messages, closed = await close_stream(ws)  # still open
    assert messages[-1]["type"] == "Metadata" and closed.code == 1000


async def test_6_configure_keyterms_need_nova_3(emu):
    e = await emu()
    ws = await connect(e, f"{PCM}&model=nova-2")
    await ws.send_str('{"type": "Configure", "keyterms": ["x"]}')
    m = await recv_json(ws)
    assert (m["type"], m["code"]) == ("ConfigureFailure", "CONFIGURE_KEYTERMS_NOT_SUPPORTED")
    await ws.close()


# --- 7. Results ------------------------------------------------------------------------------------------


async def test_7_interims_endpointing_finals_and_metadata_object(emu):
    e = await emu()
    ws = await connect(e, f"{PCM}&interim_results=true&endpointing=300&punctuate=true")
    await send(ws, tone(0.9) + silence(0.5) + tone(0.3) + silence(3.5))
    messages, _ = await close_stream(ws)
    results = [m for m in messages if m["type"] == "Results"]
    interims = [m for m in results if not m["is_final"]]
    assert interims and interims[0]["channel"]["alternatives"][0]["transcript"] == "Alpha"
    first_final = next(m for m in results if m["is_final"])
    assert first_final["speech_final"] and first_final["channel"]["alternatives"][0]["transcript"] == (
        "Alpha bravo charlie."
    )
    assert first_final["channel_index"] == [0, 1] and first_final["start"] == 0.0
    words = first_final["channel"]["alternatives"][0]["words"]
    assert [w["word"] for w in words] == ["alpha", "bravo", "charlie"] and words[0]["start"] == 0.0
    assert words[-1]["punctuated_word"] == "charlie."
    second = [m for m in results if m["is_final"]][1]
    assert second["channel"]["alternatives"][0]["words"][0]["start"] == pytest.approx(1.4)  # absolute times
    assert set(first_final["metadata"]) == {"request_id", "model_info", "model_uuid"}
    # 3 s of silence after the last word: an empty speech_final.
    assert any(
        m["is_final"] and m["speech_final"] and not m["channel"]["alternatives"][0]["transcript"] for m in results
    )
    assert any(not m["is_final"] and not m["channel"]["alternatives"][0]["transcript"] for m in interims)


async def test_7_multichannel_transcribes_each_channel(emu):
    e = await emu()
    left, right = memoryview(tone(0.6)).cast("h"), memoryview(silence(0.6)).cast("h")
    import array

    stereo = array.array("h", [0]) * (2 * len(left))
    stereo[0::2], stereo[1::2] = array.array("h", left), array.array("h", right)
    ws = await connect(e, f"{PCM}&channels=2&multichannel=true")
    await send(ws, stereo.tobytes(), channels=2)
    messages, _ = await close_stream(ws)
    by_channel = {tuple(m["channel_index"]): m for m in messages if m["type"] == "Results" and m["is_final"]}
    assert by_channel[(0, 2)]["channel"]["alternatives"][0]["transcript"] == "alpha bravo"
    assert by_channel[(1, 2)]["channel"]["alternatives"][0]["transcript"] == ""
    assert messages[-1]["duration"] == 0.6 and messages[-1]["channels"] == 2


# --- 8. SpeechStarted and UtteranceEnd --------------------------------------------------------------------


async def test_8_vad_events_and_utterance_end(emu):
    e = await emu()
    ws = await connect(e, f"{PCM}&vad_events=true&interim_results=true&utterance_end_ms=1000")
    await send(ws, silence(0.5) + tone(0.6) + silence(1.5))
    messages, _ = await close_stream(ws)
    kinds = [m["type"] for m in messages]
    started = messages[kinds.index("SpeechStarted")]
    assert started == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.5}
    end = messages[kinds.index("UtteranceEnd")]
    assert end == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.1}
    ws = await connect(e, f"{PCM}&interim_results=true")  # neither without their parameters
    await send(ws, tone(0.6) + silence(1.5))
    messages, _ = await close_stream(ws)
    assert not {"SpeechStarted", "UtteranceEnd"} & {m["type"] for m in messages}


# --- 9. Metadata ---------------------------------------------------------------------------------------------


async def test_9_metadata_once_with_the_audio_received(emu):
    e = await emu()
    ws = await connect(e)
    messages, closed = await close_stream(ws)
    meta = messages[-1]
    assert meta["type"] == "Metadata" and meta["duration"] == 0.0 and "models" not in meta
    ws = await connect(e)
    await send(ws, tone(1.25))
    messages, closed = await close_stream(ws)
    meta = [m for m in messages if m["type"] == "Metadata"]
    assert len(meta) == 1 and (closed.code, closed.reason) == (1000, "")
    m = meta[0]
    assert (m["transaction_key"], m["sha256"], m["duration"], m["channels"]) == ("deprecated", "incomplete", 1.25, 1)
    assert m["created"].endswith("Z") and m["models"] == list(m["model_info"])


# --- 10. idle timeout ------------------------------------------------------------------------------------


async def test_10_no_frame_for_the_timeout_sends_metadata_and_closes_1011(emu):
    e = await emu()
    ws = await connect(e, f"{PCM}&emu_idle_timeout_seconds=0.4")
    await send(ws, tone(0.2))
    await asyncio.sleep(0.25)
    await ws.send_str('{"type":"KeepAlive"}')  # resets the timer
    kept = asyncio.get_running_loop().time()
    m = await recv_json(ws, timeout=2)
    assert asyncio.get_running_loop().time() - kept >= 0.35
    assert m["type"] == "Metadata" and m["duration"] == 0.2
    closed = await recv(ws)
    assert isinstance(closed, Closed) and (closed.code, closed.reason) == (1011, NET0001)


# --- 11. pacing ---------------------------------------------------------------------------------------------


async def test_11_pacing_is_ignored_by_default_and_can_close(emu):
    e = await emu()
    ws = await connect(e)
    await ws.send_bytes(silence(5.0))
    with pytest.raises(TimeoutError):
        while True:  # Results, never a close
            assert not isinstance(await recv(ws, timeout=0.2), Closed)
    await ws.close()
    ws = await connect(e, f"{PCM}&emu_rate_check=on")
    await ws.send_bytes(silence(5.0))
    assert (await recv_json(ws))["type"] == "Metadata"
    closed = await recv(ws)
    assert isinstance(closed, Closed) and closed.code == 1011


# --- 12. Flux is out of scope ------------------------------------------------------------------------------


async def test_12_v2_listen_is_not_served(emu):
    e = await emu()
    async with e.http.get(e.http_url("/v2/listen")) as r:
        assert r.status == 404


# --- 13. token grant ---------------------------------------------------------------------------------------


async def test_13_grant_then_bearer_upgrade(emu):
    e = await emu()
    url = e.http_url("/v1/auth/grant")
    async with e.http.post(url, headers={"Authorization": f"Token {DG_KEY}"}) as r:
        grant = await r.json()
    assert r.status == 200 and grant["expires_in"] == 30 and grant["access_token"].count(".") == 2
    async with e.http.post(url, headers={"Authorization": f"token {DG_KEY}"}, json={"ttl_seconds": 5}) as r:
        assert (await r.json())["expires_in"] == 5
    for body in ({"ttl_seconds": 0}, {"ttl_seconds": 3601}):
        async with e.http.post(url, headers={"Authorization": f"Token {DG_KEY}"}, json=body) as r:
            assert r.status == 400 and set(await r.json()) == {"err_code", "err_msg", "request_id"}
    async with e.http.post(url, headers={"Authorization": "Token wrong"}) as r:
        assert r.status == 401
    ws = await connect(e, key=grant["access_token"], scheme="bearer")
    await ws.close()
    ws = await connect(e, key=None, protocols=("bearer", grant["access_token"]))
    assert ws.protocol == "bearer"
    await ws.close()


# --- 14. pings, and the fault knobs ----------------------------------------------------------------------------


async def test_14_pings_are_answered(emu):
    e = await emu()
    ws = await connect(e, heartbeat=0.1)
    await asyncio.sleep(0.35)
    assert not ws.closed
    await ws.close()


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    [("net0001", 1011, NET0001, True), ("net0000", 1011, "NET-0000", True), ("data0000", 1008, "DATA-0000", False)],
)
async def test_fault_knobs(emu, error, code, reason, metadata):
    e = await emu()
    ws = await connect(e, f"{PCM}&emu_error={error}&emu_error_after_frames=1")
    await ws.send_bytes(silence(0.1))
    m = await recv(ws)
    if metadata:
        assert m["type"] == "Metadata"  # type: ignore[index]
        m = await recv(ws)
    assert isinstance(m, Closed) and (m.code, m.reason) == (code, reason)
    ws = await connect(e, f"{PCM}&emu_close_after_frames=2&emu_close_code=4000&emu_close_reason=bye")
    await send(ws, silence(0.2))
    m = await recv(ws)
    assert isinstance(m, Closed) and (m.code, m.reason) == (4000, "bye")
