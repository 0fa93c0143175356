"""Sans-I/O audio analysis for the provider emulators.

An energy-based voice detector over PCM16 (little-endian) and G.711 μ-law, and a deterministic
"transcriber" that turns voiced audio into words: one word per ``word_seconds`` (default 0.3 s) of
voiced audio, taken in order from a fixed word list (the NATO alphabet), so a test can predict the
transcript exactly from the audio it sends. Silence produces no words.

Cost: audio is cut into blocks of ``block_seconds`` (50 ms) and each block's RMS is computed from at
most ``max_points`` samples (a strided subsample) with C-level ``map``/``sum``, never a Python loop per
sample, so a second of 16 kHz audio costs about 20 short block evaluations.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from operator import mul

WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip

PCM16 = "pcm_s16le"
MULAW = "mulaw"

_LITTLE_ENDIAN = sys.byteorder == "little"


def word_for(index: int, words: tuple[str, ...] = WORDS) -> str:
    """The ``index``-th word of a session's transcript (0-based): the word list, cycled."""
    return words[index % len(words)]


def _ulaw_decode(byte: int) -> int:
    """G.711 μ-law byte → linear PCM16 sample."""
    u = ~byte & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


ULAW_TO_LINEAR: tuple[int, ...] = tuple(_ulaw_decode(b) for b in range(256))
_ULAW_SQUARES: tuple[int, ...] = tuple(v * v for v in ULAW_TO_LINEAR)


def ulaw_encode(sample: int) -> int:
    """Linear PCM16 sample → G.711 μ-law byte (for tests and demos)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Encoding (``pcm_s16le`` or ``mulaw``) and sample rate of a mono stream."""

    encoding: str = PCM16
    sample_rate: int = 16000

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.encoding == MULAW else 2

    @property
    def bytes_per_second(self) -> int:
        return self.bytes_per_sample * self.sample_rate

    def seconds(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_second

    def nbytes(self, seconds: float) -> int:
        return round(seconds * self.sample_rate) * self.bytes_per_sample


class EnergyMeter:
    """Per-block RMS (0..1 of full scale) of a chunk of audio, from a subsample of each block."""

    __slots__ = ("block_samples", "fmt", "max_points")

    def __init__(self, fmt: AudioFormat, block_seconds: float = 0.05, max_points: int = 160) -> None:
        self.fmt = fmt
        self.block_samples = max(1, round(fmt.sample_rate * block_seconds))
        self.max_points = max(1, max_points)

    def blocks(self, data: bytes) -> Iterator[tuple[float, float]]:
        """Yield ``(duration_seconds, rms)`` for each block of ``data`` (the last block may be short)."""
        rate = self.fmt.sample_rate
        bs = self.block_samples
        maxp = self.max_points
        if self.fmt.encoding == MULAW:
            n = len(data)
            squares = _ULAW_SQUARES.__getitem__
            for off in range(0, n, bs):
                count = min(bs, n - off)
                step = max(1, count // maxp)
                sub = data[off : off + count : step]
                yield count / rate, math.sqrt(sum(map(squares, sub)) / len(sub)) / 32768.0
            return
        n = len(data) // 2
        if n == 0:
            return
        if _LITTLE_ENDIAN:
            samples: memoryview[int] = memoryview(data)[: n * 2].cast("h")
        else:  # pragma: no cover - big-endian hosts
            swapped = array("h")
            swapped.frombytes(data[: n * 2])
            swapped.byteswap()
            samples = memoryview(swapped)
        for off in range(0, n, bs):
            count = min(bs, n - off)
            step = max(1, count // maxp)
            window = samples[off : off + count : step]
            yield count / rate, math.sqrt(sum(map(mul, window, window)) / len(window)) / 32768.0


@dataclass(slots=True)
class Word:
    """A generated word: its text, start/end in seconds of the session's audio, and its index."""

    text: str
    start: float
    end: float
    index: int


@dataclass(slots=True)
class Block:
    """What one analysed block changed: its duration, whether it was voiced, a finished word (if any)
    and whether a run of speech ended at this block (the first silent block after voiced ones)."""

    seconds: float
    voiced: bool
    word: Word | None
    speech_ended: bool


class SpeechTracker:
    """Deterministic stand-in for a speech recogniser.

    Feed it audio; it yields one :class:`Block` per analysed block. Every ``word_seconds`` of voiced
    audio in a run of speech completes a word; when the run ends (a silent block), a leftover of at
    least half a word becomes one more word, a shorter one is discarded. ``silence_seconds`` is the
    trailing silence since the last voiced block, ``audio_seconds`` the session's audio clock.
    """

    def __init__(
        self,
        fmt: AudioFormat,
        *,
        threshold: float = 0.01,
        word_seconds: float = 0.3,
        block_seconds: float = 0.05,
        words: tuple[str, ...] = WORDS,
    ) -> None:
        self.threshold = threshold
        self.word_seconds = word_seconds
        self.block_seconds = block_seconds
        self.words = words
        self.meter = EnergyMeter(fmt, block_seconds)
        self.audio_seconds = 0.0
        self.voiced_seconds = 0.0
        self.silence_seconds = 0.0
        self.in_speech = False
        self.word_count = 0
        self._acc = 0.0
        self._word_start = 0.0

    @property
    def fmt(self) -> AudioFormat:
        return self.meter.fmt

    def set_format(self, fmt: AudioFormat) -> None:
        if fmt != self.meter.fmt:
            self.meter = EnergyMeter(fmt, self.block_seconds)

    def feed(self, data: bytes) -> Iterator[Block]:
        for seconds, rms in self.meter.blocks(data):
            yield self.advance(seconds, rms >= self.threshold)

    def advance(self, seconds: float, voiced: bool) -> Block:
        start = self.audio_seconds
        self.audio_seconds = end = start + seconds
        word = None
        ended = False
        if voiced:
            self.voiced_seconds += seconds
            self.silence_seconds = 0.0
            if not self.in_speech:
                self.in_speech = True
            if self._acc == 0.0:
                self._word_start = start
            self._acc += seconds
            if self._acc >= self.word_seconds - 1e-9:
                word = self._make_word(end)
        else:
            self.silence_seconds += seconds
            if self.in_speech:
                self.in_speech = False
                ended = True
                word = self._leftover(start)
        return Block(seconds, voiced, word, ended)

    def flush(self) -> Word | None:
        """End the current word now (commit, endpoint, termination): a leftover of at least half a
        word becomes a word, a shorter one is dropped."""
        return self._leftover(self.audio_seconds)

    def _leftover(self, end: float) -> Word | None:
        if self._acc >= self.word_seconds / 2 - 1e-9:
            return self._make_word(end)
        self._acc = 0.0
        return None

    def _make_word(self, end: float) -> Word:
        index = self.word_count
        self.word_count += 1
        self._acc = 0.0
        return Word(word_for(index, self.words), round(self._word_start, 3), round(end, 3), index)


# --- audio generation helpers (tests, demos, benchmarks) -------------------------------------------


def tone_pcm16(seconds: float, *, sample_rate: int = 16000, freq: float = 300.0, amplitude: int = 8000) -> bytes:
    """A sine tone as PCM16 little-endian mono."""
    n = round(seconds * sample_rate)
    w = 2 * math.pi * freq / sample_rate
    samples = array("h", (int(amplitude * math.sin(w * i)) for i in range(n)))
    if not _LITTLE_ENDIAN:  # pragma: no cover
        samples.byteswap()
    return samples.tobytes()


def silence_pcm16(seconds: float, *, sample_rate: int = 16000) -> bytes:
    return b"\x00\x00" * round(seconds * sample_rate)


def pcm16_to_mulaw(pcm: bytes) -> bytes:
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    if not _LITTLE_ENDIAN:  # pragma: no cover
        samples.byteswap()
    return bytes(ulaw_encode(s) for s in samples)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
