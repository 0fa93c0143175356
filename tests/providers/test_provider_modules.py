import base64
import json
from decimal import Decimal
from fractions import Fraction

import pytest

from sttgate.config import Settings
from sttgate.core.metering import AudioFormat, BinaryMeter, ChunkMeter
from sttgate.core.params import split_query
from sttgate.emulators.app import EMULATORS
from sttgate.providers import PROVIDERS, get_provider
from sttgate.providers.assemblyai import ASSEMBLYAI
from sttgate.providers.deepgram import DEEPGRAM
from sttgate.providers.elevenlabs import ELEVENLABS, parse_chunk


def test_registry_is_exact_and_lower_case() -> None:
    assert set(PROVIDERS) == {"elevenlabs", "assemblyai", "deepgram"}
    assert get_provider("elevenlabs") is ELEVENLABS
    assert get_provider("assemblyai") is ASSEMBLYAI
    assert get_provider("deepgram") is DEEPGRAM
    for name in ("ElevenLabs", "ASSEMBLYAI", " assemblyai", "Deepgram", ""):
        assert get_provider(name) is None


def test_every_provider_has_an_emulator() -> None:
    """``sttgate emulate``, the demo and the tests need an emulator for every shipped provider."""
    assert set(EMULATORS) == set(PROVIDERS)
    for name, emulator in EMULATORS.items():
        assert emulator.name == name


def test_elevenlabs_url_adds_model_id_only_when_missing() -> None:
    base = "wss://api.elevenlabs.io/v1/speech-to-text/realtime"
    fwd = split_query(
        "provider=elevenlabs&api_key=sk-mai-x&keyterms=a%20b&keyterms=c&include_timestamps=true"
    ).forwarded
    assert ELEVENLABS.upstream_url(base, fwd) == f"{base}?keyterms=a%20b&keyterms=c&include_timestamps=true" + (
        "&model_id=scribe_v2_realtime"
    )
    assert ELEVENLABS.upstream_url(base, "model_id=scribe_v3_live") == f"{base}?model_id=scribe_v3_live"
    assert ELEVENLABS.upstream_url(base, "") == f"{base}?model_id=scribe_v2_realtime"


def test_assemblyai_url_adds_sample_rate_only_when_missing() -> None:
    base = "wss://streaming.assemblyai.com/v3/ws"
    fwd = "format_turns=True&keyterms_prompt=%5B%22A%22%2C+%22B%22%5D"
    assert ASSEMBLYAI.upstream_url(base, fwd) == f"{base}?{fwd}&sample_rate=16000"
    assert ASSEMBLYAI.upstream_url(base, "sample_rate=8000&encoding=pcm_mulaw") == (
        f"{base}?sample_rate=8000&encoding=pcm_mulaw"
    )


def test_base_url_with_its_own_query() -> None:
    assert (
        ASSEMBLYAI.upstream_url("ws://emu/v3/ws?region=eu", "a=1") == "ws://emu/v3/ws?region=eu&a=1&sample_rate=16000"
    )
    assert ASSEMBLYAI.upstream_url("ws://emu/v3/ws?sample_rate=8000", "") == "ws://emu/v3/ws?sample_rate=8000"
    assert ASSEMBLYAI.upstream_url("ws://emu/v3/ws?", "a=1") == "ws://emu/v3/ws?a=1&sample_rate=16000"


def test_credential_headers() -> None:
    assert ELEVENLABS.credential_headers("el-key") == {"xi-api-key": "el-key"}
    assert ASSEMBLYAI.credential_headers("aai-key") == {"Authorization": "aai-key"}


def test_meters_follow_the_declared_format() -> None:
    aai = ASSEMBLYAI.new_meter("encoding=pcm_mulaw&sample_rate=8000")
    assert isinstance(aai, BinaryMeter)
    assert aai.audio_format == AudioFormat(1, 8000)
    el = ELEVENLABS.new_meter("audio_format=ulaw_8000")
    assert isinstance(el, ChunkMeter)
    assert el.audio_format == AudioFormat(1, 8000)
    assert ASSEMBLYAI.new_meter("").binary(b"\0" * 32_000) == 1
    assert ELEVENLABS.new_meter("").binary(b"\0" * 32_000) == 0


def test_pull_framing() -> None:
    pcm = bytes(range(200)) * 16  # 100 ms at 16 kHz
    assert ASSEMBLYAI.audio_frame(pcm) == pcm
    frame = ELEVENLABS.audio_frame(pcm)
    assert isinstance(frame, str)
    assert json.loads(frame) == {
        "message_type": "input_audio_chunk",
        "audio_base_64": base64.b64encode(pcm).decode(),
        "commit": False,
        "sample_rate": 16000,
    }
    # The gateway's own frames take the metering fast path and meter exactly 100 ms.
    assert parse_chunk(frame) == (3200, 16000)
    meter = ELEVENLABS.new_meter("audio_format=pcm_16000")
    meter.text(frame)
    assert meter.audio_exact == Fraction(1, 10)


def test_end_frames() -> None:
    assert [json.loads(f) for f in ASSEMBLYAI.end_frames()] == [{"type": "Terminate"}]
    assert [json.loads(f) for f in ELEVENLABS.end_frames()] == [
        {"message_type": "input_audio_chunk", "audio_base_64": "", "commit": True, "sample_rate": 16000}
    ]
    assert json.loads(ELEVENLABS.end_frames("audio_format=ulaw_8000")[0])["sample_rate"] == 8000
    assert ASSEMBLYAI.closes_after_end is True
    assert ELEVENLABS.closes_after_end is False


def test_end_messages_sent_by_the_client() -> None:
    """A client's own end message spares the gateway's: each provider's own end frames are recognised."""
    for provider in (ASSEMBLYAI, ELEVENLABS):
        assert all(provider.is_end_message(frame) for frame in provider.end_frames())
    assert ASSEMBLYAI.is_end_message('{"type": "Terminate"}')
    assert not ASSEMBLYAI.is_end_message('{"type":"KeepAlive"}')
    assert not ASSEMBLYAI.is_end_message("Terminate")
    chunk = '{"message_type":"input_audio_chunk","audio_base_64":"AAAA","commit":%s}'
    assert ELEVENLABS.is_end_message(chunk % "true")  # audio and commit in one chunk: everything is committed
    assert not ELEVENLABS.is_end_message(chunk % "false")
    assert not ELEVENLABS.is_end_message(chunk % '"true"')
    assert not ELEVENLABS.is_end_message('{"message_type":"commit","commit":true}')


def test_end_frames_meter_nothing() -> None:
    for provider in (ASSEMBLYAI, ELEVENLABS):
        meter = provider.new_meter("")
        assert [meter.text(f) for f in provider.end_frames()] == [0]
        assert meter.cycles == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"Termination","audio_duration_seconds":12,"session_duration_seconds":13}', True),
        ('{"turn_order":0,"end_of_turn":true,"transcript":"","type":"Turn"}', False),
        ('{"type":"Begin"}', False),
        ("not json", False),
        ('["Termination"]', False),
    ],
)
def test_assemblyai_end_ack(text: str, expected: bool) -> None:
    assert ASSEMBLYAI.is_end_ack(text) is expected


def test_elevenlabs_end_ack() -> None:
    committed = '{"message_type":"committed_transcript","text":"hi"}'
    timestamped = '{"message_type":"committed_transcript_with_timestamps","text":"hi","words":[]}'
    throttled = '{"message_type":"commit_throttled","error":"Commit request ignored"}'
    partial = '{"message_type":"partial_transcript","text":"hi"}'
    assert ELEVENLABS.is_end_ack(committed)
    assert ELEVENLABS.is_end_ack(throttled)
    assert not ELEVENLABS.is_end_ack(partial)
    assert not ELEVENLABS.is_end_ack("{")
    # With timestamps the provider sends the timestamped transcript after the plain one: wait for it.
    assert not ELEVENLABS.is_end_ack(committed, "include_timestamps=true")
    assert ELEVENLABS.is_end_ack(timestamped, "include_timestamps=True")
    assert ELEVENLABS.is_end_ack(throttled, "include_timestamps=true")


def test_settings_lookups() -> None:
    settings = Settings(
        elevenlabs_url="ws://emu/v1/speech-to-text/realtime",
        assemblyai_url="ws://emu/v3/ws",
        elevenlabs_api_key="el",
        assemblyai_api_key="aai",
    )
    elevenlabs, assemblyai = settings.provider("elevenlabs"), settings.provider("assemblyai")
    assert (elevenlabs.url, elevenlabs.api_key.get_secret_value()) == ("ws://emu/v1/speech-to-text/realtime", "el")
    assert (assemblyai.url, assemblyai.api_key.get_secret_value()) == ("ws://emu/v3/ws", "aai")
    assert ELEVENLABS.operator_headers(elevenlabs) == {"xi-api-key": "el"}
    assert elevenlabs.rate == Decimal("0.39")
    assert assemblyai.rate == Decimal("0.15")
