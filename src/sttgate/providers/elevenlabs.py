"""ElevenLabs Scribe realtime: base64 audio in JSON text frames, commit-then-close end.

Metering: text ``input_audio_chunk`` frames carry base64 audio; a chunk may declare its own ``sample_rate``, so
rates mix within a session (:class:`~sttgate.core.metering.ChunkMeter`); binary frames are not audio. The declared
format and every chunk are read strictly (docs/billing.md#elevenlabs): what the gateway cannot read exactly as the
provider will is refused (400 at the handshake, 1008 "unmeterable audio" for a chunk).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sttgate.core import refusals
from sttgate.core.metering import (
    UNREADABLE,
    AudioFormat,
    ChunkMeter,
    FormatError,
    FormatRefusal,
    Meter,
    base64_audio_bytes,
    ticks_per_second,
)
from sttgate.core.params import canonical_int, format_values, query_values
from sttgate.providers.base import PULL_SAMPLE_RATE, Caption, MintRequest, Provider, SdkShape, TokenMint, json_object

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
# Rates a chunk may declare for itself. Any other value (0, negative, a float, a string, 10**9…) makes the chunk
# unmeterable: the provider may decode it at that rate, which the gateway does not meter.
ELEVENLABS_RATES = frozenset(fmt.sample_rate for fmt in ELEVENLABS_FORMATS.values())
# Least common multiple of every byte rate (1 or 2 bytes × every rate): 14,112,000 ticks per second.
TICKS_PER_SECOND = ticks_per_second((1, 2), ELEVENLABS_RATES)


_FORMAT_KEYS = frozenset({"audio_format", "encoding", "sample_rate"})

_AUDIO_KEY = '"audio_base_64"'


class _Duplicated(list[tuple[str, Any]]):
    """A JSON object with a repeated key, as its members in order: providers resolve repeats differently."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Duplicated:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _Duplicated(pairs)


# One decoder for every frame (``json.loads(..., strict=False)`` would build a new one per call); control characters
# inside strings are tolerated; an object with a repeated key is kept as its members.
_LENIENT_JSON = json.JSONDecoder(strict=False, object_pairs_hook=_object)


def _repeated(members: _Duplicated) -> tuple[int, int | None] | None:
    """An object with a repeated key is unreadable when some reading of it (first or last of each repeat) is an audio
    chunk: a ``message_type`` ``input_audio_chunk`` and a string ``audio_base_64``; else it is not audio."""
    chunk = any(key == "message_type" and value == "input_audio_chunk" for key, value in members)
    audio = any(key == "audio_base_64" and type(value) is str for key, value in members)
    return UNREADABLE if chunk and audio else None


def _rate(message: dict[str, Any]) -> tuple[bool, int | None]:
    """``(readable, rate)`` of a chunk's ``sample_rate``: absent or ``null`` → the session's; a JSON integer → that
    rate (the meter refuses one it does not meter); anything else (``8000.0``, ``"8000"``, ``true``) is read as a
    rate by some parsers and not others: unreadable."""
    rate = message.get("sample_rate")
    if rate is None or type(rate) is int:
        return True, rate
    return False, None


def parse_chunk_reference(frame: str) -> tuple[int, int | None] | None:
    """The definition of what an ElevenLabs text frame carries: ``(audio bytes, declared sample_rate)``, ``None``
    (no audio) or :data:`~sttgate.core.metering.UNREADABLE` (docs/billing.md#elevenlabs).

    A frame carries audio when it is a JSON object (parsed with ``strict=False``: control characters inside strings
    are tolerated) whose ``message_type`` is ``"input_audio_chunk"`` and whose ``audio_base_64`` is a string; its
    bytes count only base64 alphabet characters. Unreadable: such an object with a repeated key, an audio string
    with characters other than the alphabet, whitespace and final padding, or a ``sample_rate`` that is neither
    absent, ``null`` nor a JSON integer.
    """
    try:
        message = _LENIENT_JSON.decode(frame)
    except (ValueError, RecursionError):
        return None
    if type(message) is _Duplicated:
        return _repeated(message)
    if type(message) is not dict or message.get("message_type") != "input_audio_chunk":
        return None
    audio = message.get("audio_base_64")
    if type(audio) is not str:
        return None
    size = base64_audio_bytes(audio)
    readable, rate = _rate(message)
    if size < 0 or not readable:
        return UNREADABLE
    return size, rate


# An envelope longer than this (a long previous_text) is parsed but not cached, so the cache stays small.
_ENVELOPE_CACHE_CHARS = 512
# What an envelope says: (_AUDIO, declared rate), _NOT_AUDIO, or UNREADABLE (first member -1).
_AUDIO = 1
_NOT_AUDIO = (0, None)


@lru_cache(maxsize=256)
def _envelope(rest: str) -> tuple[int, int | None] | None:
    """What a frame says besides its audio text: ``(_AUDIO, declared rate)``, ``_NOT_AUDIO`` or ``UNREADABLE``.

    ``None`` when the cut-out string was not the value of ``audio_base_64`` after all. Cached because a session
    sends the same envelope (same keys, same rate) with every chunk: the repeated-key check costs nothing then.
    """
    try:
        message = _LENIENT_JSON.decode(rest)
    except (ValueError, RecursionError):
        return _NOT_AUDIO
    if type(message) is _Duplicated:
        return _repeated(message) or _NOT_AUDIO
    if type(message) is not dict or message.get("message_type") != "input_audio_chunk":
        return _NOT_AUDIO
    if message.get("audio_base_64") != "":
        return None
    readable, rate = _rate(message)
    return (_AUDIO, rate) if readable else UNREADABLE


def parse_chunk(frame: str) -> tuple[int, int | None] | None:
    """Same result as :func:`parse_chunk_reference` on every input, without parsing the audio string.

    Usual frames (no backslash anywhere, one ``"audio_base_64"`` followed by ``:"`` or ``: "``) are parsed with the
    base64 text cut out, so the JSON parser sees ~100 characters instead of kilobytes, and a repeated envelope is
    not parsed again at all. Anything else falls back to the reference. Why this is exact: without backslashes
    every ``"`` delimits a string, so the cut removes exactly the value of the one ``audio_base_64`` key (checked
    again on the parsed envelope) and keeps every other key and value; the envelope validates everything else with
    the real parser, repeated keys included.
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
    kind, rate = envelope
    if kind != _AUDIO:
        return None if kind == 0 else UNREADABLE
    size = base64_audio_bytes(frame[value:end])
    return UNREADABLE if size < 0 else (size, rate)


def elevenlabs_format(forwarded: str) -> AudioFormat | FormatRefusal:
    """The declared ElevenLabs format, or why it is refused (docs/billing.md#elevenlabs).

    The provider reads ``audio_format`` (default ``pcm_16000``); old SDKs (2.20–2.26.0) send the legacy
    ``encoding=pcm_16000&sample_rate=16000`` instead. Whether the provider takes ``encoding`` as an alias or ignores
    it is not documented, and it ignores the ``sample_rate`` query: so ``encoding`` must name the same format as
    ``audio_format`` (``pcm_16000`` when absent), and ``sample_rate`` must be that format's rate in canonical digits.
    Names are exact; any key given twice or spelled another way is refused.
    """
    values = format_values(forwarded, _FORMAT_KEYS)
    if isinstance(values, str):
        return FormatRefusal(FormatError.INVALID, values)
    name = values.get("audio_format", ELEVENLABS_DEFAULT_FORMAT)
    fmt = ELEVENLABS_FORMATS.get(name)
    if fmt is None:
        return FormatRefusal(FormatError.INVALID, f"unknown audio_format {name!r}: use {', '.join(ELEVENLABS_FORMATS)}")
    if "encoding" in values and values["encoding"] != name:
        return FormatRefusal(FormatError.INVALID, f"encoding {values['encoding']!r} contradicts audio_format {name!r}")
    if "sample_rate" in values and canonical_int(values["sample_rate"], fmt.sample_rate) != fmt.sample_rate:
        return FormatRefusal(
            FormatError.INVALID, f"sample_rate {values['sample_rate']!r} contradicts audio_format {name!r}"
        )
    return fmt


def elevenlabs_meter(forwarded: str) -> Meter:
    """A meter for a session with these forwarded parameters (text chunks carry audio); a refused format raises
    ``ValueError``: the gateway never meters a value the client set as another."""
    fmt = elevenlabs_format(forwarded)
    if isinstance(fmt, FormatRefusal):
        raise ValueError(fmt.detail)
    return ChunkMeter(fmt, parse_chunk, ELEVENLABS_RATES, TICKS_PER_SECOND)


def _session_rate(forwarded: str) -> int:
    """The declared rate of a session that passed the handshake (the default's for a refused format)."""
    fmt = elevenlabs_format(forwarded)
    return (fmt if isinstance(fmt, AudioFormat) else ELEVENLABS_FORMATS[ELEVENLABS_DEFAULT_FORMAT]).sample_rate


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
        raise refusals.invalid_token_type("Only realtime_scribe tokens are served by this gateway.")
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

    def format_refusal(self, forwarded: str) -> FormatRefusal | None:
        fmt = elevenlabs_format(forwarded)
        return fmt if isinstance(fmt, FormatRefusal) else None

    def audio_frame(self, pcm: bytes) -> str:
        """A 16 kHz chunk; the pull feeder connects with ``audio_format=pcm_16000``."""
        return _chunk(base64.b64encode(pcm).decode("ascii"), False, PULL_SAMPLE_RATE)

    def end_frames(self, forwarded: str = "") -> list[str]:
        """An empty committing chunk, at the session's declared rate (16000 in pull mode)."""
        return [_chunk("", True, _session_rate(forwarded))]

    def caption(self, message: Mapping[str, Any]) -> Caption | None:
        """``partial_transcript`` and ``committed_transcript``; errors are message types with an ``error`` field."""
        kind = message.get("message_type")
        if kind == "partial_transcript":
            text = str(message.get("text", ""))
            return Caption("partial", text) if text else None
        if kind == "committed_transcript":
            return Caption("final", str(message.get("text", "")))
        if kind == "session_started":
            return Caption("event", "session_started")
        return Caption("event", f"error: {dict(message)}") if "error" in message else None

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
