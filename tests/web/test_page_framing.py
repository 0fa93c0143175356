"""The page in a real Chromium, through the gateway, to scripted providers: what exactly does the browser send?

The gateway relays frames byte for byte, so a scripted provider behind it sees exactly what the page sent: the
browser side (token fetch, getUserMedia, the AudioWorklet's 16 kHz s16le conversion, each provider's framing, the
graceful end) is checked frame by frame. The page against the real emulators is in ``test_page_e2e.py``.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import wave
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.browser import Browser
from tests.support.emulator import EMULATOR_PATHS, OPERATOR_KEYS
from tests.support.gateway import AccountGateway
from tests.support.servers import serving

FRAME_BYTES = 3200  # 100 ms of 16 kHz s16le
TONE_HZ = 440


@dataclass
class Recorded:
    query: dict[str, str] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)  # "binary" / "text" per frame, in order
    pcm: list[bytes] = field(default_factory=list)
    control: list[dict[str, object]] = field(default_factory=list)
    close_code: int | None = None


async def _assemblyai(request: web.Request) -> web.WebSocketResponse:
    rec: Recorded = request.app[RECORDED]
    rec.query = dict(request.query)
    assert request.headers["Authorization"] == OPERATOR_KEYS["assemblyai"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"type": "Begin", "id": "x", "expires_at": 0})
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.BINARY:
            rec.kinds.append("binary")
            rec.pcm.append(msg.data)
            n = len(rec.pcm)
            if n % 5 == 0:  # a word every 0.5 s; a turn ends every 2 s
                words = [
                    {"text": f"w{i}", "start": 0, "end": 0, "confidence": 1, "word_is_final": True}
                    for i in range(n // 5)
                ]
                end = n % 20 == 0
                await ws.send_json(
                    {"type": "Turn", "turn_order": n // 20 - (1 if end else 0), "end_of_turn": end,
                     "turn_is_formatted": False, "transcript": " ".join(w["text"] for w in words),
                     "end_of_turn_confidence": 0.5, "words": words}
                )  # fmt: skip
        elif msg.type is aiohttp.WSMsgType.TEXT:
            rec.kinds.append("text")
            rec.control.append(json.loads(msg.data))
            await ws.send_json({"type": "Termination", "audio_duration_seconds": 1, "session_duration_seconds": 1})
            await ws.close(code=1000, message=b"Session Ended")
    rec.close_code = ws.close_code
    return ws


async def _elevenlabs(request: web.Request) -> web.WebSocketResponse:
    rec: Recorded = request.app[RECORDED]
    rec.query = dict(request.query)
    assert request.headers["xi-api-key"] == OPERATOR_KEYS["elevenlabs"]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"message_type": "session_started", "session_id": "x", "config": {}})
    async for msg in ws:
        rec.kinds.append("binary" if msg.type is aiohttp.WSMsgType.BINARY else "text")
        chunk = json.loads(msg.data)
        rec.control.append({k: v for k, v in chunk.items() if k != "audio_base_64"})
        if chunk["audio_base_64"]:
            rec.pcm.append(base64.b64decode(chunk["audio_base_64"]))
            await ws.send_json({"message_type": "partial_transcript", "text": f"heard {len(rec.pcm)} chunks"})
        if chunk["commit"]:
            await ws.send_json({"message_type": "committed_transcript", "text": f"committed {len(rec.pcm)} chunks"})
    rec.close_code = ws.close_code
    return ws


async def _deepgram(request: web.Request) -> web.WebSocketResponse:
    rec: Recorded = request.app[RECORDED]
    rec.query = dict(request.query)
    assert request.headers["Authorization"] == f"Token {OPERATOR_KEYS['deepgram']}"
    ws = web.WebSocketResponse()
    await ws.prepare(request)

    def results(final: bool) -> dict[str, object]:
        text = f"heard {len(rec.pcm)} frames"
        return {"type": "Results", "is_final": final, "channel": {"alternatives": [{"transcript": text}]}}

    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.BINARY:
            rec.kinds.append("binary")
            rec.pcm.append(msg.data)
            if len(rec.pcm) % 5 == 0:
                await ws.send_json(results(final=len(rec.pcm) % 20 == 0))
        elif msg.type is aiohttp.WSMsgType.TEXT:
            rec.kinds.append("text")
            rec.control.append(json.loads(msg.data))
            await ws.send_json(results(final=True))
            await ws.send_json({"type": "Metadata", "duration": len(rec.pcm) / 10, "channels": 1})
            await ws.close(code=1000)
    rec.close_code = ws.close_code
    return ws


RECORDED = web.AppKey("recorded", Recorded)


@dataclass
class Site:
    url: str
    recorded: Recorded


@pytest.fixture
async def site(page_gateway: Callable[..., Awaitable[AccountGateway]]) -> AsyncIterator[Site]:
    """The gateway with the page, relaying to the scripted providers above."""
    provider = web.Application()
    provider[RECORDED] = Recorded()
    provider.router.add_get(EMULATOR_PATHS["assemblyai"], _assemblyai)
    provider.router.add_get(EMULATOR_PATHS["elevenlabs"], _elevenlabs)
    provider.router.add_get(EMULATOR_PATHS["deepgram"], _deepgram)
    async with serving(provider) as port:
        gw = await page_gateway(upstream=f"ws://127.0.0.1:{port}")
        yield Site(gw.url, provider[RECORDED])


def _rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


async def _run(browser: Browser, site: Site, provider: str, until: str) -> str:
    page = await browser.new_page()
    await page.navigate(f"{site.url}/demo/")
    await page.evaluate(f"document.getElementById('provider').value = '{provider}'")
    await page.evaluate("document.getElementById('start').click()", user_gesture=True)
    await page.wait_for("document.getElementById('status').dataset.state === 'live'", "live")
    await page.wait_for(until, "transcript")
    await page.wait_for("parseFloat(document.getElementById('audio-seconds').textContent) >= 2", "2 s of audio")
    await page.evaluate("document.getElementById('stop').click()", user_gesture=True)
    await page.wait_for("document.getElementById('status').dataset.state === 'ended'", "ended")
    return await page.evaluate("document.getElementById('finals').innerText")


async def test_assemblyai_framing(site: Site, browser: Browser) -> None:
    text = await _run(browser, site, "assemblyai", "document.querySelector('#finals p.final')")
    rec = site.recorded
    assert rec.query["sample_rate"] == "16000" and rec.query["encoding"] == "pcm_s16le"
    assert "token" not in rec.query  # the gateway consumed it
    # Binary 100 ms frames (the last one may be shorter), then Terminate as the only text frame.
    assert rec.kinds[-1] == "text" and set(rec.kinds[:-1]) == {"binary"}
    assert rec.control == [{"type": "Terminate"}]
    assert all(len(f) == FRAME_BYTES for f in rec.pcm[:-1]) and 0 < len(rec.pcm[-1]) <= FRAME_BYTES
    assert len(rec.pcm) >= 20
    assert max(_rms(f) for f in rec.pcm) > 500  # speech, not silence
    assert rec.close_code == 1000
    assert "w0 w1 w2 w3" in text


async def test_elevenlabs_framing(site: Site, browser: Browser) -> None:
    text = await _run(browser, site, "elevenlabs", "document.querySelector('#finals p.partial')")
    rec = site.recorded
    assert rec.query["model_id"] == "scribe_v2_realtime" and rec.query["audio_format"] == "pcm_16000"
    assert "token" not in rec.query
    assert set(rec.kinds) == {"text"}
    audio = [c for c in rec.control if not c["commit"]]
    assert all(c == {"message_type": "input_audio_chunk", "commit": False, "sample_rate": 16000} for c in audio)
    assert rec.control[-1] == {"message_type": "input_audio_chunk", "commit": True, "sample_rate": 16000}
    assert all(len(f) == FRAME_BYTES for f in rec.pcm[:-1])
    assert max(_rms(f) for f in rec.pcm) > 500
    assert rec.close_code == 1000
    assert f"committed {len(rec.pcm)} chunks" in text


async def test_deepgram_framing(site: Site, browser: Browser) -> None:
    text = await _run(browser, site, "deepgram", "document.querySelector('#finals p.final')")
    rec = site.recorded
    assert (rec.query["encoding"], rec.query["sample_rate"], rec.query["model"]) == ("linear16", "16000", "nova-3")
    assert "token" not in rec.query
    # Binary 100 ms frames (the last one may be shorter), then CloseStream as the only text frame.
    assert rec.kinds[-1] == "text" and set(rec.kinds[:-1]) == {"binary"}
    assert rec.control == [{"type": "CloseStream"}]
    assert all(len(f) == FRAME_BYTES for f in rec.pcm[:-1]) and 0 < len(rec.pcm[-1]) <= FRAME_BYTES
    assert max(_rms(f) for f in rec.pcm) > 500
    assert rec.close_code == 1000
    assert "heard 20 frames" in text and f"heard {len(rec.pcm)} frames" in text


def _tone_wav(path: Path, seconds: float = 3.0, rate: int = 44100) -> Path:
    samples = array("h", (int(12000 * math.sin(2 * math.pi * TONE_HZ * n / rate)) for n in range(int(seconds * rate))))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize("fake_microphone", ["tone"], indirect=True)
async def test_worklet_resamples_to_16k(site: Site, browser: Browser) -> None:
    """A 440 Hz tone captured at the context's rate arrives as 440 Hz in 16 kHz PCM: the resampler keeps pitch."""
    page = await browser.new_page()
    await page.navigate(f"{site.url}/demo/")
    await page.evaluate("document.getElementById('start').click()", user_gesture=True)
    await page.wait_for("document.getElementById('status').dataset.state === 'live'", "live")
    await page.wait_for("parseFloat(document.getElementById('audio-seconds').textContent) >= 1.5", "1.5 s of audio")
    await page.evaluate("document.getElementById('stop').click()", user_gesture=True)
    await page.wait_for("document.getElementById('status').dataset.state === 'ended'", "ended")
    loud = [f for f in site.recorded.pcm if len(f) == FRAME_BYTES and _rms(f) > 1000]
    assert loud, "no tone reached the endpoint"
    samples = array("h", loud[len(loud) // 2])
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    frequency = crossings / 2 / (len(samples) / 16000)
    assert abs(frequency - TONE_HZ) < 20
