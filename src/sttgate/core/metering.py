"""Audio metering and the 5-second cycle clock (docs/billing.md#cycles).

A :class:`Meter` counts the audio of one session in integer *units* per second of audio, so that any split of the
same audio into frames gives exactly the same total and the same cycles: no float is ever accumulated.

- Binary audio frames (:class:`BinaryMeter`): one unit per byte, ``bytes_per_second`` units per second.
- Text chunks that may each declare their own sample rate (:class:`ChunkMeter`), so rates mix within a session:
  the unit is ``1 / ticks_per_second`` s, a common multiple of every byte rate the provider allows
  (:func:`ticks_per_second`), so every byte is a whole number of ticks whatever its rate.

This module is provider-neutral: which meter and format a session gets is the provider module's decision
(``sttgate.providers``).

Cycle *n+1* opens the moment the metered audio first exceeds *n* × 5 s; a session costs ``ceil(audio / 5 s)``
cycles. The frame that opens cycles is counted at once; when the gateway cannot pay for them it does not forward the
frame and calls :meth:`Meter.refund_last`, which leaves the meter as if that frame never came.

Strict metering (docs/billing.md#strict-metering): the meter reads exactly what the provider will read, or refuses.
A declared format it cannot read is a :class:`FormatRefusal` (the handshake answers 400); a frame it cannot read
makes :meth:`Meter.text`/:meth:`Meter.binary` return :data:`UNMETERABLE` (the frame is not forwarded and the session
closes 1008 "unmeterable audio"). Nothing is counted for such a frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Final

from sttgate.core.money import CYCLE_SECONDS

# What a text frame carries: ``(audio bytes, declared sample rate or None)``, ``None`` when it carries no audio, or
# :data:`UNREADABLE` when it may carry audio that the meter cannot read exactly as the provider will.
ChunkParser = Callable[[str], tuple[int, int | None] | None]
UNREADABLE: Final[tuple[int, None]] = (-1, None)

# What ``Meter.text``/``Meter.binary`` return for a frame the meter cannot read (instead of a number of cycles).
UNMETERABLE: Final = -1


class FormatError(StrEnum):
    """Why a declared format is refused at the handshake; the value is the refusal's code (docs/contract.md)."""

    # Repeated, non-canonical, unknown or contradictory format parameters: the provider might read them otherwise.
    INVALID = "invalid_audio_format"
    # An encoding whose duration cannot be known from its length (opus, aac…).
    UNSUPPORTED = "unsupported_audio_format"


@dataclass(frozen=True)
class FormatRefusal:
    """A declared format the gateway refuses to meter, and why (a sentence for the client)."""

    error: FormatError
    detail: str


@dataclass(frozen=True)
class AudioFormat:
    """Uncompressed audio: its duration follows from its byte count."""

    bytes_per_sample: int
    sample_rate: int
    channels: int = 1

    @property
    def bytes_per_second(self) -> int:
        return self.bytes_per_sample * self.sample_rate * self.channels


class Meter:
    """Meters one session's client→provider frames and charges 5-second cycles.

    This base class meters nothing: it stands for a declared format whose duration cannot be computed from byte
    counts (compressed encodings such as ``opus`` or ``aac``). Such sessions are relayed but never charged; the shell
    can tell from ``audio_format is None``.

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
        """Meter one binary frame; return the number of new cycles it opens, or :data:`UNMETERABLE`."""
        return 0

    def binary_size(self, size: int) -> int:
        """Meter one binary frame known only by its payload size (a relay that forwards frames without reading them
        meters from the header); as :meth:`binary`. Meters that must read a binary frame's bytes do not have it."""
        return 0

    def text(self, data: str) -> int:
        """Meter one text frame; return the number of new cycles it opens, or :data:`UNMETERABLE`."""
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
    """Every binary frame is raw audio, metered by its length; text frames are control messages.

    Interleaved channels are one stream of audio (``bytes_per_second`` counts them all), unless ``per_channel``:
    then the provider transcribes, and bills, each channel as its own audio, so a second of N-channel audio meters
    N seconds (docs/billing.md#what-is-metered).
    """

    __slots__ = ()

    def __init__(self, audio_format: AudioFormat, *, per_channel: bool = False) -> None:
        units = audio_format.bytes_per_second // (audio_format.channels if per_channel else 1)
        super().__init__(units, audio_format)

    def binary(self, data: bytes) -> int:
        # The hot path: two integer operations and a comparison, no call unless a cycle opens.
        total = self._units + len(data)
        self._units = total
        if total <= self._limit:
            return 0
        return self._open(len(data))

    def binary_size(self, size: int) -> int:
        total = self._units + size
        self._units = total
        if total <= self._limit:
            return 0
        return self._open(size)


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Not audio, skipped by every lenient (MIME-style) base64 decoder; a strict decoder refuses the chunk, decoding less.
_BASE64_WHITESPACE = b" \t\n\r\f\v"


def base64_audio_bytes(text: str) -> int:
    """Bytes a base64 string decodes to, counting only alphabet characters; -1 when it cannot be read for certain.

    Every 4 alphabet characters (``A-Z a-z 0-9 + /``) are 3 bytes (a partial group of 2 or 3 is 1 or 2 bytes, as
    unpadded base64). Whitespace is not audio and is not counted (a lenient decoder skips it, a strict one decodes
    nothing). ``=`` is padding only at the end. Anything else (the URL-safe ``-``/``_``, other punctuation, control or
    non-ASCII characters, data after padding) is read differently by different decoders: -1, the frame is refused.
    """
    if not text.isascii():
        return -1
    raw = text.encode("ascii").rstrip(b"=")
    if not raw.translate(None, _BASE64_ALPHABET):  # the usual chunk: alphabet only, then padding
        return len(raw) * 3 // 4
    raw = raw.translate(None, _BASE64_WHITESPACE).rstrip(b"=")
    if raw.translate(None, _BASE64_ALPHABET):
        return -1
    return len(raw) * 3 // 4


def ticks_per_second(widths: Iterable[int], rates: Iterable[int]) -> int:
    """The least common multiple of every byte rate (each sample width × each rate): the tick unit of a
    :class:`ChunkMeter`, so that every byte of every allowed rate is a whole number of ticks."""
    rates = tuple(rates)
    return math.lcm(*(width * rate for width in widths for rate in rates))


class ChunkMeter(Meter):
    """Text frames carry audio (as ``parse`` reads them); binary frames are not audio.

    A chunk that declares no rate is metered at the session format's rate; one that declares one of ``rates`` at that
    rate (with the session format's sample width). Any other declared rate, or a chunk ``parse`` finds
    :data:`UNREADABLE`, is :data:`UNMETERABLE`: metering it at another rate would bill less than the provider decodes.
    A frame that ``parse`` finds carries no audio meters nothing.
    """

    __slots__ = ("_parse", "_ticks_per_byte")

    def __init__(self, audio_format: AudioFormat, parse: ChunkParser, rates: Iterable[int], ticks: int) -> None:
        super().__init__(ticks, audio_format)
        bytes_per_frame = audio_format.bytes_per_sample * audio_format.channels
        self._parse = parse
        self._ticks_per_byte: dict[int | None, int] = {rate: ticks // (bytes_per_frame * rate) for rate in rates}
        self._ticks_per_byte[None] = self._ticks_per_byte[audio_format.sample_rate]

    def text(self, data: str) -> int:
        chunk = self._parse(data)
        if chunk is None:
            return 0
        size, rate = chunk
        ticks = self._ticks_per_byte.get(rate)
        if ticks is None or size < 0:
            return UNMETERABLE
        units = size * ticks
        total = self._units + units
        self._units = total
        if total <= self._limit:
            return 0
        return self._open(units)
