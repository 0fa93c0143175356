"""ElevenLabs Scribe realtime: base64 audio in JSON text frames, commit-then-close end.

Metering: text ``input_audio_chunk`` frames carry base64 audio; a chunk may declare its own ``sample_rate``, so
rates mix within a session (:class:`~sttgate.core.metering.ChunkMeter`); binary frames are not audio.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache

from sttgate.core.metering import AudioFormat, ChunkMeter, Meter, base64_decoded_length, ticks_per_second
from sttgate.core.params import positive_int, query_values
from sttgate.core.refusals import Refusal
from sttgate.providers.base import PULL_SAMPLE_RATE, MintRequest, Provider, SdkShape, TokenMint, json_object

MODEL_ID = "scribe_v2_realtime"
# With include_timestamps the provider sends this after the committed_transcript of the same segment.
_TIMESTAMPED = "committed_transcript_with_timestamps"
# Answers to a commit: the transcript, or a refusal when under 0.3 s of audio was uncommitted (nothing more follows).
_COMMIT_ANSWERS = frozenset({"committed_transcript", "commit_throttled"})
# The provider documents 15 minutes for its single-use tokens; ours are capped by the gateway's maximum.
TOKEN_SECONDS = 15 * 60
TOKEN_TYPE = "realtime_scribe"

# ElevenLabs formats: name -> (bytes per sample, sample rate).
ELEVENLABS_FORMATS: Mapping[str, AudioFormat] = {
    **{f"pcm_{rate}": AudioFormat(2, rate) for rate in (8000, 16000, 22050, 24000, 44100, 48000)},
    "ulaw_8000": AudioFormat(1, 8000),
}
ELEVENLABS_DEFAULT_FORMAT = "pcm_16000"
# Rates a chunk may declare for itself. Any other value (0, negative, a float, a string, 10**9…) is ignored and the
# session's rate applies: an arbitrary rate would make audio arbitrarily cheap and break exact tick arithmetic.
ELEVENLABS_RATES = frozenset(fmt.sample_rate for fmt in ELEVENLABS_FORMATS.values())
# Least common multiple of every byte rate (1 or 2 bytes × every rate): 14,112,000 ticks per second.
TICKS_PER_SECOND = ticks_per_second((1, 2), ELEVENLABS_RATES)


_AUDIO_KEY = '"audio_base_64"'
# One decoder for every frame: ``json.loads(..., strict=False)`` would build a new one per call.
_LENIENT_JSON = json.JSONDecoder(strict=False)


def parse_chunk_reference(frame: str) -> tuple[int, int | None] | None:
    """The definition of what an ElevenLabs text frame carries: ``(audio bytes, declared sample_rate)`` or ``None``.

    A frame carries audio when it is a JSON object (parsed with ``strict=False``: control characters inside strings
    are tolerated) whose ``message_type`` is ``"input_audio_chunk"`` and whose ``audio_base_64`` is a string. The
    rate is the ``sample_rate`` member when it is a JSON integer, else ``None``. Duplicate keys: the last one wins.
    """
    try:
        message = _LENIENT_JSON.decode(frame)
    except (ValueError, RecursionError):
        return None
    if type(message) is not dict or message.get("message_type") != "input_audio_chunk":
        return None
    audio = message.get("audio_base_64")
    if type(audio) is not str:
        return None
    rate = message.get("sample_rate")
    return base64_decoded_length(audio), rate if type(rate) is int else None


# An envelope longer than this (a long previous_text) is parsed but not cached, so the cache stays small.
_ENVELOPE_CACHE_CHARS = 512


@lru_cache(maxsize=256)
def _envelope(rest: str) -> tuple[bool, int | None] | None:
    """What a frame says besides its audio text: ``(carries audio, declared rate)``.

    ``None`` when the cut-out string was not the value of ``audio_base_64`` after all. Cached because a session
    sends the same envelope (same keys, same rate) with every chunk.
    """
    try:
        message = _LENIENT_JSON.decode(rest)
    except (ValueError, RecursionError):
        return False, None
    if type(message) is not dict or message.get("message_type") != "input_audio_chunk":
        return False, None
    if message.get("audio_base_64") != "":
        return None
    rate = message.get("sample_rate")
    return True, rate if type(rate) is int else None


def parse_chunk(frame: str) -> tuple[int, int | None] | None:
    """Same result as :func:`parse_chunk_reference` on every input, without parsing the audio string.

    Usual frames (no backslash anywhere, one ``"audio_base_64"`` followed by ``:"`` or ``: "``) are parsed with the
    base64 text cut out, so the JSON parser sees ~100 characters instead of kilobytes, and a repeated envelope is
    not parsed again at all. Anything else falls back to the reference. Why this is exact: without backslashes
    every ``"`` delimits a string, so the cut removes exactly the value of the one ``audio_base_64`` key (checked
    again on the parsed envelope); the envelope validates everything else with the real parser.
    """
    start = frame.find(_AUDIO_KEY)
    if start < 0:
        # Without an escape the key cannot be spelled any other way: the frame carries no audio string.
        return None if "\\" not in frame else parse_chunk_reference(frame)
    value = start + len(_AUDIO_KEY)
    if frame.startswith(':"', value):
        value += 2
    elif frame.startswith(': "', value):
        value += 3
    else:
        return parse_chunk_reference(frame)
    end = frame.find('"', value)
    if end < 0 or "\\" in frame or frame.find(_AUDIO_KEY, end) >= 0:
        return parse_chunk_reference(frame)
    rest = frame[:value] + frame[end:]
    envelope = _envelope(rest) if len(rest) <= _ENVELOPE_CACHE_CHARS else _envelope.__wrapped__(rest)
    if envelope is None:
        return parse_chunk_reference(frame)
    if not envelope[0]:
        return None
    length = end - value
    if length and frame[end - 1] == "=":
        length = len(frame[value:end].rstrip("="))
    return length * 3 // 4, envelope[1]


def elevenlabs_format(forwarded: str) -> AudioFormat:
    """The declared ElevenLabs format: ``audio_format``, else the legacy ``encoding``/``sample_rate``, else pcm_16000.

    Old SDKs (2.20–2.26.0) send ``encoding=pcm_16000&sample_rate=16000`` instead of ``audio_format``; a bare legacy
    ``sample_rate`` that is an ElevenLabs rate means 16-bit PCM at that rate. Unknown values fall back to the default,
    which is what the provider does with parameters it ignores.
    """
    values = query_values(forwarded)
    for key in ("audio_format", "encoding"):
        fmt = ELEVENLABS_FORMATS.get(values.get(key, ""))
        if fmt is not None:
            return fmt
    rate = positive_int(values.get("sample_rate"))
    return ELEVENLABS_FORMATS.get(f"pcm_{rate}", ELEVENLABS_FORMATS[ELEVENLABS_DEFAULT_FORMAT])


def elevenlabs_meter(forwarded: str) -> Meter:
    """A meter for a session with these forwarded parameters (text chunks carry audio)."""
    return ChunkMeter(elevenlabs_format(forwarded), parse_chunk, ELEVENLABS_RATES, TICKS_PER_SECOND)


def _chunk(audio_base_64: str, commit: bool, sample_rate: int) -> str:
    flag = "true" if commit else "false"
    return (
        f'{{"message_type":"input_audio_chunk","audio_base_64":"{audio_base_64}",'
        f'"commit":{flag},"sample_rate":{sample_rate}}}'
    )


def _stream_credential(headers: Mapping[str, str], query_token: str | None) -> tuple[str | None, str | None]:
    """``?token=`` (the SDK then sends no header) takes precedence over the ``xi-api-key`` header."""
    if query_token:
        return None, query_token
    return headers.get("xi-api-key", "").strip() or None, None


def _mint_key(headers: Mapping[str, str]) -> str | None:
    return headers.get("xi-api-key", "").strip() or None


def _mint_seconds(request: MintRequest) -> int:
    """``POST /v1/single-use-token/realtime_scribe``: the lifetime is the provider's, capped by the gateway's."""
    if request.path_params.get("token_type") != TOKEN_TYPE:
        raise Refusal(422, "invalid_token_type", "Only realtime_scribe tokens are served by this gateway.")
    return min(TOKEN_SECONDS, request.max_seconds)


class ElevenLabs(Provider):
    """Audio is ``input_audio_chunk`` JSON text frames; ``xi-api-key`` carries the key; no terminate message exists."""

    name = "elevenlabs"
    default_url = "wss://api.elevenlabs.io/v1/speech-to-text/realtime"
    default_rate = Decimal("0.39")
    model_param = "model_id"
    required_defaults = ((model_param, MODEL_ID),)
    pull_format = (("audio_format", "pcm_16000"),)
    # There is no end-of-session message: the gateway commits, waits for the transcript (or a timeout), closes 1000.
    closes_after_end = False
    auth_error_markers = (b'"auth_error"',)
    # Single-use tokens.
    secret_prefixes = ("sutkn_",)
    sdk = SdkShape(
        stream_path="/elevenlabs/v1/speech-to-text/realtime",
        credential=_stream_credential,
        token_mints=(
            TokenMint(
                method="POST",
                path="/elevenlabs/v1/single-use-token/{token_type}",
                key=_mint_key,
                seconds=_mint_seconds,
                body=lambda token, seconds: {"token": token},
            ),
        ),
    )
    demo_params = (("commit_strategy", "manual"),)
    page_label = "ElevenLabs Scribe realtime"
    page_script = "elevenlabs.js"

    def credential_headers(self, api_key: str) -> dict[str, str]:
        return {"xi-api-key": api_key}

    def new_meter(self, forwarded: str) -> Meter:
        return elevenlabs_meter(forwarded)

    def audio_frame(self, pcm: bytes) -> str:
        """A 16 kHz chunk; the pull feeder connects with ``audio_format=pcm_16000``."""
        return _chunk(base64.b64encode(pcm).decode("ascii"), False, PULL_SAMPLE_RATE)

    def end_frames(self, forwarded: str = "") -> list[str]:
        """An empty committing chunk, at the session's declared rate (16000 in pull mode)."""
        return [_chunk("", True, elevenlabs_format(forwarded).sample_rate)]

    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        """The commit's answer; with ``include_timestamps=true`` the timestamped transcript that follows it."""
        message = json_object(text)
        if message is None:
            return False
        kind = message.get("message_type")
        if query_values(forwarded).get("include_timestamps", "").strip().lower() == "true":
            return kind in (_TIMESTAMPED, "commit_throttled")
        return kind in _COMMIT_ANSWERS

    def is_end_message(self, text: str) -> bool:
        """A committing chunk: everything the client sent before it is committed, so the gateway sends no commit of
        its own (one with nothing to commit is answered ``commit_throttled``, an error the client did not cause)."""
        message = json_object(text)
        return (
            message is not None and message.get("message_type") == "input_audio_chunk" and message.get("commit") is True
        )


ELEVENLABS = ElevenLabs()
