"""Audio metering and the 5-second cycle clock (SPEC §4).

A :class:`Meter` counts the audio of one session in integer *units* per second of audio, so that any split of the
same audio into frames gives exactly the same total and the same cycles: no float is ever accumulated.

- AssemblyAI (:class:`BinaryMeter`): one unit per byte, ``bytes_per_sample × sample_rate`` units per second.
- ElevenLabs (:class:`ChunkMeter`): a chunk may declare its own ``sample_rate``, so rates mix within a session. The
  unit is ``1 / TICKS_PER_SECOND`` s, a common multiple of every ElevenLabs byte rate, so every byte is a whole
  number of ticks whatever its rate.

Cycle *n+1* opens the moment the metered audio first exceeds *n* × 5 s; a session costs ``ceil(audio / 5 s)``
cycles. The frame that opens cycles is counted at once; when the gateway cannot pay for them it does not forward the
frame and calls :meth:`Meter.refund_last`, which leaves the meter as if that frame never came.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from sttgate.core.money import CYCLE_SECONDS
from sttgate.core.params import query_values


@dataclass(frozen=True)
class AudioFormat:
    """Uncompressed mono audio: its duration follows from its byte count."""

    bytes_per_sample: int
    sample_rate: int

    @property
    def bytes_per_second(self) -> int:
        return self.bytes_per_sample * self.sample_rate


class Meter:
    """Meters one session's client→provider frames and charges 5-second cycles.

    This base class meters nothing: it stands for a declared format whose duration cannot be computed from byte
    counts (AssemblyAI ``opus``, ``ogg_opus``, ``aac``…). Such sessions are relayed but never charged; the shell can
    tell from ``audio_format is None``.

    ``binary``/``text`` return how many cycles the frame opens (almost always 0). When that is > 0 the caller pays
    for them before forwarding the frame, or, if it cannot, drops the frame and calls ``refund_last(n)``.
    """

    __slots__ = ("_cycle_units", "_limit", "_undo", "_units", "_units_per_second", "audio_format", "cycles")

    def __init__(self, units_per_second: int = 1, audio_format: AudioFormat | None = None) -> None:
        self.audio_format = audio_format
        self._units_per_second = units_per_second
        self._cycle_units = units_per_second * CYCLE_SECONDS
        self._units = 0
        self._limit = 0  # units covered by the cycles charged so far
        self.cycles = 0
        # (units after the frame, units it added, cycles it opened) for the last frame that opened cycles.
        self._undo: tuple[int, int, int] | None = None

    def binary(self, data: bytes) -> int:
        """Meter one binary frame; return the number of new cycles it opens."""
        return 0

    def text(self, data: str) -> int:
        """Meter one text frame; return the number of new cycles it opens."""
        return 0

    @property
    def audio_exact(self) -> Fraction:
        """Metered audio in seconds, exactly."""
        return Fraction(self._units, self._units_per_second)

    @property
    def audio_seconds(self) -> float:
        return self._units / self._units_per_second

    def audio_seconds_without_last(self) -> float:
        """Metered audio without the last frame that opened cycles: what is settled while that frame's charge is in
        flight (it may still be refunded, and written totals never go down)."""
        undo = self._undo
        if undo is None or undo[0] != self._units:
            return self._units / self._units_per_second
        return (self._units - undo[1]) / self._units_per_second

    def refund_last(self, cycles: int) -> None:
        """Forget the last frame, which opened ``cycles`` cycles the gateway could not pay and did not forward.

        Only valid right after that frame (no metered frame in between) and with the count it returned; anything
        else is a bug in the caller and raises ``RuntimeError`` rather than silently mis-billing.
        """
        undo = self._undo
        if undo is None or undo[0] != self._units or undo[2] != cycles:
            raise RuntimeError("refund_last() must follow the frame that opened exactly these cycles")
        self._units -= undo[1]
        self.cycles -= cycles
        self._limit = self.cycles * self._cycle_units
        self._undo = None

    def _open(self, units: int) -> int:
        cycles = -(-self._units // self._cycle_units)
        opened = cycles - self.cycles
        self.cycles = cycles
        self._limit = cycles * self._cycle_units
        self._undo = (self._units, units, opened)
        return opened


class BinaryMeter(Meter):
    """AssemblyAI: every binary frame is raw audio, metered by its length; text frames are control messages."""

    __slots__ = ()

    def __init__(self, audio_format: AudioFormat) -> None:
        super().__init__(audio_format.bytes_per_second, audio_format)

    def binary(self, data: bytes) -> int:
        # The hot path: two integer operations and a comparison, no call unless a cycle opens.
        total = self._units + len(data)
        self._units = total
        if total <= self._limit:
            return 0
        return self._open(len(data))


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
TICKS_PER_SECOND = 14_112_000


def base64_decoded_length(text: str) -> int:
    """Bytes a base64 string decodes to, from its length alone (no decoding).

    Trailing ``=`` padding is not data; every 4 other characters are 3 bytes (a partial group of 2 or 3 characters
    is 1 or 2 bytes, as unpadded base64). The alphabet is not checked: a lenient decoder skips foreign characters,
    so counting them can only over-meter a malformed frame, never under-meter a good one.
    """
    return len(text.rstrip("=")) * 3 // 4


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


class ChunkMeter(Meter):
    """ElevenLabs: text ``input_audio_chunk`` frames carry base64 audio; binary frames are not audio.

    A chunk whose ``sample_rate`` is one of the ElevenLabs rates is metered at that rate (with the session format's
    sample width); otherwise at the session format's rate. A frame that does not parse meters nothing.
    """

    __slots__ = ("_default_ticks", "_ticks_per_byte")

    def __init__(self, audio_format: AudioFormat) -> None:
        super().__init__(TICKS_PER_SECOND, audio_format)
        bps = audio_format.bytes_per_sample
        self._ticks_per_byte = {rate: TICKS_PER_SECOND // (bps * rate) for rate in ELEVENLABS_RATES}
        self._default_ticks = self._ticks_per_byte[audio_format.sample_rate]

    def text(self, data: str) -> int:
        chunk = parse_chunk(data)
        if chunk is None:
            return 0
        size, rate = chunk
        units = size * self._ticks_per_byte.get(rate, self._default_ticks)
        total = self._units + units
        self._units = total
        if total <= self._limit:
            return 0
        return self._open(units)


def _positive_int(text: str | None) -> int | None:
    if text and text.isascii() and text.isdigit():
        value = int(text)
        return value or None
    return None


ASSEMBLYAI_DEFAULT_RATE = 16000
ASSEMBLYAI_ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}


def assemblyai_format(forwarded: str) -> AudioFormat | None:
    """The declared AssemblyAI format, or ``None`` for an encoding we cannot meter by length (opus, aac…).

    ``encoding`` (compared case-insensitively) defaults to ``pcm_s16le``; ``sample_rate`` to 16000, which also
    applies when the value is not a positive integer (the provider refuses such a session anyway).
    """
    values = query_values(forwarded)
    width = ASSEMBLYAI_ENCODINGS.get(values.get("encoding", "pcm_s16le").strip().lower())
    if width is None:
        return None
    return AudioFormat(width, _positive_int(values.get("sample_rate")) or ASSEMBLYAI_DEFAULT_RATE)


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
    rate = _positive_int(values.get("sample_rate"))
    return ELEVENLABS_FORMATS.get(f"pcm_{rate}", ELEVENLABS_FORMATS[ELEVENLABS_DEFAULT_FORMAT])


def assemblyai_meter(forwarded: str) -> Meter:
    """A meter for an AssemblyAI session with these forwarded parameters (binary frames are audio)."""
    fmt = assemblyai_format(forwarded)
    return Meter() if fmt is None else BinaryMeter(fmt)


def elevenlabs_meter(forwarded: str) -> Meter:
    """A meter for an ElevenLabs session with these forwarded parameters (text chunks carry audio)."""
    return ChunkMeter(elevenlabs_format(forwarded))
