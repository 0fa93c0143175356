"""The providers' official Python SDKs, unmodified, through the gateway to the emulators.

Each SDK is pointed at the gateway by its base URL only (``ElevenLabs(base_url=…/elevenlabs)``,
``StreamingClientOptions(api_host="ws://…/assemblyai")``) and given the customer's ``sk-mai-`` key or a gateway
token; it streams the bundled speech sample, receives transcripts, and the account is billed as docs/billing.md says.
"""

from __future__ import annotations

import asyncio
import base64
import math
import wave
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aiohttp
import pytest

from sttgate.core.money import cycle_price_nanos, format_usd
from sttgate.emulators.transcriber import WORDS
from tests.support.gateway import AccountGateway, ended_usage

# The SDKs are test dependencies: pip install elevenlabs 'assemblyai>=0.61.1'.
pytest.importorskip("elevenlabs", reason="the ElevenLabs SDK is not installed (pip install elevenlabs)")
pytest.importorskip("assemblyai", minversion="0.61.1", reason="pip install 'assemblyai>=0.61.1' (ws:// api_host)")

import httpx  # a dependency of both SDKs
from assemblyai.streaming.v3 import (
    AsyncStreamingClient,
    StreamingClientOptions,
    StreamingEvents,
    StreamingParameters,
)
from elevenlabs import AsyncElevenLabs, AudioFormat, CommitStrategy, RealtimeEvents

Start = Callable[..., Awaitable[AccountGateway]]
RATE = 16000
CHUNK = RATE // 10 * 2  # 100 ms of s16le
SECONDS = 6.0  # two billing cycles
TIMEOUT = 15.0


def sample_pcm(seconds: float = SECONDS) -> bytes:
    with (
        resources.as_file(resources.files("sttgate") / "data" / "sample.wav") as path,
        wave.open(str(path)) as wav,
    ):
        assert wav.getframerate() == RATE and wav.getnchannels() == 1
        return wav.readframes(int(seconds * RATE))


async def paced(pcm: bytes, send: Callable[[bytes], Awaitable[Any]]) -> None:
    """Send 100 ms chunks at real time (AssemblyAI closes 3007 on audio faster than real time)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, len(pcm), CHUNK)):
        await send(pcm[i : i + CHUNK])
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.1 - loop.time()))


def assert_emulator_words(text: str) -> None:
    """The emulator transcribes voiced audio as the NATO alphabet, in order, from the first word."""
    words = [w.strip(".,!?").lower() for w in text.split()]
    assert words, "no transcript"
    assert words == list(WORDS[: len(words)]), text


def assert_bill(usage: dict[str, Any], provider: str, rate: str, audio_seconds: float) -> None:
    cycles = math.ceil(audio_seconds / 5)
    total = usage["totals"][provider]
    assert total["sessions"] == 1
    assert total["audio_seconds"] == pytest.approx(audio_seconds, abs=1e-3)
    assert total["billed_seconds"] == cycles * 5
    assert total["cost_usd"] == format_usd(cycles * cycle_price_nanos(rate))


# --- ElevenLabs ---------------------------------------------------------------------------------------------------


async def _elevenlabs_session(client: AsyncElevenLabs, pcm: bytes, **options: Any) -> list[str]:
    conn = await client.speech_to_text.realtime.connect(
        {
            "model_id": "scribe_v2_realtime",
            "audio_format": AudioFormat.PCM_16000,
            "sample_rate": RATE,
            "commit_strategy": CommitStrategy.MANUAL,
            **options,
        }
    )
    committed: list[str] = []
    done = asyncio.Event()
    errors: list[Any] = []
    # Handlers right after connect(), with no await in between (the SDK dispatches at once).
    conn.on(RealtimeEvents.COMMITTED_TRANSCRIPT, lambda m: (committed.append(m["text"]), done.set()))
    conn.on(RealtimeEvents.ERROR, lambda m: (errors.append(m), done.set()))
    for i in range(0, len(pcm), CHUNK):
        await conn.send({"audio_base_64": base64.b64encode(pcm[i : i + CHUNK]).decode()})
    await conn.commit()
    await asyncio.wait_for(done.wait(), TIMEOUT)
    await conn.close()
    assert not errors
    return committed


async def test_elevenlabs_sdk_with_api_key(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    client = AsyncElevenLabs(api_key=gw.key, base_url=f"{gw.url}/elevenlabs")
    committed = await _elevenlabs_session(client, sample_pcm(), include_timestamps=True)
    assert_emulator_words(" ".join(committed))

    rec = gw.recorder.last
    assert rec is not None and rec.provider == "elevenlabs"
    # The SDK's query went upstream byte for byte; the operator's key replaced the customer's.
    assert rec.query_string == (
        "model_id=scribe_v2_realtime&audio_format=pcm_16000&commit_strategy=manual&include_timestamps=true"
    )
    assert rec.header("xi-api-key") == "emulator-elevenlabs-key"
    assert gw.key not in str(rec.headers) and gw.key not in rec.query_string
    assert_bill(await ended_usage(gw, "elevenlabs"), "elevenlabs", gw.settings.rate_elevenlabs, SECONDS)


async def test_elevenlabs_sdk_single_use_token_helper(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    async with httpx.AsyncClient() as http:  # the SDK does not close a client it made itself
        backend = AsyncElevenLabs(api_key=gw.key, base_url=f"{gw.url}/elevenlabs", httpx_client=http)
        token = (await backend.tokens.single_use.create("realtime_scribe")).token
    assert token.startswith("sttg_")

    browser_like = AsyncElevenLabs(api_key=None, base_url=f"{gw.url}/elevenlabs")
    committed = await _elevenlabs_session(browser_like, sample_pcm(), token=token)
    assert_emulator_words(" ".join(committed))
    rec = gw.recorder.last
    assert rec is not None and "token" not in rec.query_string and token not in str(rec.headers)
    assert_bill(await ended_usage(gw, "elevenlabs"), "elevenlabs", gw.settings.rate_elevenlabs, SECONDS)

    # Single use: the same token again is refused before the upgrade.
    with pytest.raises(Exception, match="401"):
        await _elevenlabs_session(browser_like, sample_pcm(0.5), token=token)


# --- AssemblyAI ---------------------------------------------------------------------------------------------------


async def _assemblyai_session(options: StreamingClientOptions, pcm: bytes) -> tuple[list[str], Any]:
    client = AsyncStreamingClient(options)
    finals: list[str] = []
    terminations: list[Any] = []
    errors: list[Any] = []
    client.on(StreamingEvents.Turn, lambda _, e: finals.append(e.transcript) if e.end_of_turn else None)
    client.on(StreamingEvents.Termination, lambda _, e: terminations.append(e))
    client.on(StreamingEvents.Error, lambda _, e: errors.append(e))
    await client.connect(StreamingParameters(sample_rate=RATE, format_turns=True))
    await paced(pcm, client.stream)
    await client.disconnect(terminate=True)
    assert not errors, errors
    assert len(terminations) == 1
    return finals, terminations[0]


def _assemblyai_options(gw: AccountGateway, **credential: str) -> StreamingClientOptions:
    # connect_timeout: the SDK's default 1 s covers the whole handshake, which the gateway meets against the
    # local emulators; a loaded CI machine gets more room.
    return StreamingClientOptions(api_host=f"ws://{gw.host}/assemblyai", connect_timeout=5.0, **credential)


async def test_assemblyai_sdk_with_api_key(sdk_gateway: Start) -> None:
    gw = await sdk_gateway()
    finals, termination = await _assemblyai_session(_assemblyai_options(gw, api_key=gw.key), sample_pcm())
    formatted = [t for t in finals if t[:1].isupper()]
    assert_emulator_words(" ".join(formatted or finals))
    assert termination.audio_duration_seconds == round(SECONDS)

    rec = gw.recorder.last
    assert rec is not None and rec.provider == "assemblyai"
    assert rec.query_string == "format_turns=True&sample_rate=16000&speech_model=universal-streaming-english"
    assert rec.header("Authorization") == "emulator-assemblyai-key"
    assert gw.key not in str(rec.headers)
    assert_bill(await ended_usage(gw, "assemblyai"), "assemblyai", gw.settings.rate_assemblyai, SECONDS)


async def test_assemblyai_sdk_with_gateway_token(sdk_gateway: Start) -> None:
    """The SDK sends a temporary token as the raw ``Authorization`` value; the gateway redeems it.

    The SDK's own ``create_temporary_token`` always uses ``https://`` (see docs/sdk.md), so the backend side mints
    over plain HTTP here, exactly as the SDK's request would look.
    """
    gw = await sdk_gateway()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{gw.url}/assemblyai/v3/token",
            params={"expires_in_seconds": "60", "max_session_duration_seconds": "300"},
            headers={"Authorization": gw.key},
        ) as resp,
    ):
        assert resp.status == 200
        token = (await resp.json())["token"]
    pcm = sample_pcm(3.0)
    finals, _ = await _assemblyai_session(_assemblyai_options(gw, token=token), pcm)
    assert finals
    rec = gw.recorder.last
    assert rec is not None and rec.header("Authorization") == "emulator-assemblyai-key"
    assert_bill(await ended_usage(gw, "assemblyai"), "assemblyai", gw.settings.rate_assemblyai, 3.0)

    # Single use: the SDK reports the gateway's 401 as an Error event and does not retry it.
    client = AsyncStreamingClient(_assemblyai_options(gw, token=token))
    errors: list[Any] = []
    client.on(StreamingEvents.Error, lambda _, e: errors.append(e))
    await client.connect(StreamingParameters(sample_rate=RATE))
    assert [getattr(e, "code", None) for e in errors] == [401]


async def test_assemblyai_sdk_temporary_token_helper_over_tls(
    sdk_gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``create_temporary_token`` always dials ``https://{api_host}``: with the gateway on TLS, the SDK's whole
    browser-token flow works unmodified, with a bare ``api_host`` (so ``wss://`` for the stream too)."""
    gw = await sdk_gateway(tls=True)
    assert gw.cert_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(gw.cert_file))
    backend = AsyncStreamingClient(StreamingClientOptions(api_key=gw.key, api_host=f"{gw.tls_host}/assemblyai"))
    token = await backend.create_temporary_token(expires_in_seconds=60, max_session_duration_seconds=300)
    assert token.startswith("sttg_")
    await backend.disconnect()
    options = StreamingClientOptions(token=token, api_host=f"{gw.tls_host}/assemblyai", connect_timeout=5.0)
    finals, _ = await _assemblyai_session(options, sample_pcm(3.0))
    assert finals
    assert_bill(await ended_usage(gw, "assemblyai"), "assemblyai", gw.settings.rate_assemblyai, 3.0)
