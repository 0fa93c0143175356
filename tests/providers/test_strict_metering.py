"""Strict metering (docs/billing.md#strict-metering): the meter reads exactly what the provider reads, or refuses.

For every format rule, randomly generated parameters and frames are either refused or metered exactly as every
plausible reading of the provider's documented behaviour decodes them. A *reading* is one way a provider's server
might parse what it gets: first or last of a repeated key, ``+`` decoded as a space or not, ``;`` as a separator or
not, keys and names compared exactly or case-folded, numbers parsed strictly or leniently (Python's ``int``,
JavaScript's ``parseInt``, a 32-bit integer that wraps), JSON objects with repeated keys resolved first- or
last-wins, base64 decoded strictly, leniently (skipping foreign characters) or as the URL-safe alphabet. A reading
that refuses the input decodes nothing and constrains nothing; every other reading must decode exactly the audio the
meter counts, else the meter must have refused.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import Iterator
from fractions import Fraction
from typing import Any
from urllib.parse import unquote, unquote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from sttgate.core.metering import UNMETERABLE, AudioFormat, FormatError, FormatRefusal
from sttgate.providers.assemblyai import assemblyai_format, assemblyai_meter
from sttgate.providers.elevenlabs import (
    ELEVENLABS_FORMATS,
    elevenlabs_format,
    elevenlabs_meter,
    parse_chunk,
    parse_chunk_reference,
)

# --- how a server might read a query -------------------------------------------------------------------------------

Pairs = list[tuple[str, str]]


def query_readings(query: str) -> Iterator[Pairs]:
    """The decoded pairs of ``query`` as different servers split and decode it."""
    for separators, decode in itertools.product(("&", "&;"), (unquote_plus, unquote)):
        parts = re.split(f"[{separators}]", query)
        yield [(decode(k), decode(v)) for k, _, v in (p.partition("=") for p in parts if p)]


def lookups(pairs: Pairs, key: str) -> Iterator[str | None]:
    """The value of ``key`` as different servers find it: exact or case-folded keys, first or last repeat."""
    for fold, last in itertools.product((False, True), (False, True)):
        values = [v for k, v in pairs if (k.strip().lower() == key if fold else k == key)]
        yield (values[-1] if last else values[0]) if values else None


def int_readings(text: str) -> Iterator[int | None]:
    """A number as different parsers read it (``None``: that parser refuses it)."""
    yield int(text) if text.isascii() and text.isdigit() else None
    try:
        python = int(text)
    except ValueError:
        python = None
    yield python
    if python is not None:
        yield python % 2**32  # a 32-bit field that wraps around
    match = re.match(r"\s*([+-]?\d+)", text)  # JavaScript parseInt
    yield int(match.group(1)) if match else None
    if re.fullmatch("0[0-7]+", text):
        yield int(text, 8)  # C's strtol with base 0: a leading zero means octal


# --- AssemblyAI ----------------------------------------------------------------------------------------------------

AAI_WIDTHS = {"pcm_s16le": 2, "pcm_mulaw": 1}
AAI_COMPRESSED = {"opus", "ogg_opus", "aac"}


def assemblyai_readings(query: str) -> Iterator[AudioFormat | str | None]:
    """What the provider decodes: a format, ``"compressed"``, or ``None`` (it refuses the session)."""
    for pairs in query_readings(query):
        for encoding, rate in itertools.product(lookups(pairs, "encoding"), lookups(pairs, "sample_rate")):
            for name in {encoding, None if encoding is None else encoding.strip().lower()}:
                if name is not None and name in AAI_COMPRESSED:
                    yield "compressed"
                    continue
                width = AAI_WIDTHS.get("pcm_s16le" if name is None else name)
                for value in [16000] if rate is None else int_readings(rate):
                    if width is None or value is None or value <= 0:
                        yield None
                    else:
                        yield AudioFormat(width, value)


_AAI_KEYS = st.sampled_from(["encoding", "sample_rate", "Sample_Rate", "ENCODING", "sample%5Frate", "emu_x"])
_AAI_VALUES = st.sampled_from(
    [
        "pcm_s16le", "pcm_mulaw", "PCM_MULAW", "pcm_mulaw ", "opus", "OPUS", "aac", "wav", "",
        "8000", "16000", "44100", "192000", "192001", "016000", "+8000", "%2B8000", "08000", " 8000", "8000+",
        "8_000", "8000abc", "-8000", "0", "4294975296", "8000.0", "%38000", "abc",
    ]
)  # fmt: skip


@st.composite
def queries(draw: st.DrawFn, keys: st.SearchStrategy[str], values: st.SearchStrategy[str]) -> str:
    """Usually one or two pairs (each value gets tried alone), sometimes up to four, joined by ``&`` or ``;``."""
    pairs = draw(st.lists(st.tuples(keys, values), min_size=1, max_size=draw(st.sampled_from([1, 1, 2, 4]))))
    joins = [draw(st.sampled_from(["&", "&", "&", ";"])) for _ in pairs]
    return "".join(j + f"{k}={v}" for j, (k, v) in zip(joins, pairs, strict=True)).lstrip("&;")


@settings(deadline=None, max_examples=600)
@given(queries(_AAI_KEYS, _AAI_VALUES), st.lists(st.integers(0, 40_000), max_size=5))
def test_assemblyai_format_is_refused_or_read_as_every_reading_reads_it(query: str, sizes: list[int]) -> None:
    fmt = assemblyai_format(query)
    readings = set(assemblyai_readings(query)) - {None}
    if isinstance(fmt, FormatRefusal):
        return
    assert readings == {fmt}, query
    meter = assemblyai_meter(query)
    for size in sizes:
        meter.binary(bytes(size))
    assert meter.audio_exact == Fraction(sum(sizes), fmt.bytes_per_second)


@settings(deadline=None)
@given(st.sampled_from(["opus", "ogg_opus", "aac", "OPUS", "Ogg_Opus "]), st.sampled_from(["", "&sample_rate=48000"]))
def test_assemblyai_compressed_encodings_are_unsupported(encoding: str, rest: str) -> None:
    unsupported = FormatRefusal(FormatError.UNSUPPORTED, "AssemblyAI encoding pcm_s16le or pcm_mulaw")
    assert assemblyai_format(f"encoding={encoding}{rest}") == unsupported
    repeated = assemblyai_format(f"encoding={encoding}&encoding={encoding}{rest}")
    assert isinstance(repeated, FormatRefusal) and repeated.error is FormatError.INVALID


# --- ElevenLabs: the declared format -------------------------------------------------------------------------------


def elevenlabs_readings(query: str) -> Iterator[AudioFormat | None]:
    """What the provider decodes. It reads ``audio_format`` (default pcm_16000); ``encoding`` may be an alias of it
    (when absent, or always) or ignored; the ``sample_rate`` query is ignored, or (a lenient reading) sets the
    rate of a PCM format."""
    for pairs in query_readings(query):
        for audio_format, encoding, rate in itertools.product(
            lookups(pairs, "audio_format"), lookups(pairs, "encoding"), lookups(pairs, "sample_rate")
        ):
            names = {audio_format or "pcm_16000"}
            if encoding is not None:
                names |= {encoding} if audio_format is None else {audio_format, encoding}
            names |= {name.strip().lower() for name in names}
            for name in names:
                fmt = ELEVENLABS_FORMATS.get(name)
                if fmt is None:
                    yield None
                    continue
                yield fmt
                if rate is not None:
                    for value in int_readings(rate):
                        if value is not None and value > 0:
                            yield AudioFormat(fmt.bytes_per_sample, value)


_EL_KEYS = st.sampled_from(["audio_format", "encoding", "sample_rate", "Audio_Format", "sample%5Frate", "model_id"])
_EL_VALUES = st.sampled_from(
    [
        "pcm_16000", "pcm_8000", "pcm_48000", "ulaw_8000", "PCM_8000", "pcm_8000 ", "mp3_44100", "",
        "16000", "8000", "48000", "+16000", "016000", "8_000", "%2B8000", "16000.0", "abc",
    ]
)  # fmt: skip


@settings(deadline=None, max_examples=600)
@given(queries(_EL_KEYS, _EL_VALUES))
def test_elevenlabs_format_is_refused_or_read_as_every_reading_reads_it(query: str) -> None:
    fmt = elevenlabs_format(query)
    if isinstance(fmt, FormatRefusal):
        assert fmt.error is FormatError.INVALID
        return
    assert set(elevenlabs_readings(query)) - {None} == {fmt}, query


# --- ElevenLabs: chunks --------------------------------------------------------------------------------------------

_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def forgiving_base64(text: str) -> int | None:
    """WHATWG forgiving-base64 (a browser's ``atob``): ASCII whitespace removed, padding optional, else strict."""
    data = re.sub("[\t\n\f\r ]", "", text)
    if len(data) % 4 == 0 and data.endswith("="):
        data = data[:-2] if data.endswith("==") else data[:-1]
    if len(data) % 4 == 1 or not set(data) <= _ALPHABET:
        return None
    return len(data) * 3 // 4


def base64_readings(text: str) -> Iterator[int | None]:
    """Decoded byte counts under different decoders (``None``: that decoder refuses the string)."""
    yield forgiving_base64(text)
    for decode in (
        lambda s: base64.b64decode(s, validate=True),
        lambda s: base64.b64decode(s),  # skips characters outside the alphabet
        lambda s: base64.b64decode(s.replace("-", "+").replace("_", "/")),  # the URL-safe alphabet too
    ):
        try:
            yield len(decode(text))
        except (binascii.Error, ValueError):
            yield None


def rate_readings(rate: Any) -> Iterator[int | None]:
    """A chunk's ``sample_rate`` as servers read it (``None``: the session's rate; ``-1``: the chunk is refused)."""
    if rate is None:
        yield None
    elif type(rate) is int:
        yield rate
    elif isinstance(rate, float) and rate.is_integer():
        yield int(rate)  # JavaScript has one number type
    elif isinstance(rate, str) and rate.isdigit():
        yield int(rate)  # a lax validator coerces numeric strings
    elif isinstance(rate, bool):
        yield int(rate)
    yield -1


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def chunk_readings(frame: str, fmt: AudioFormat) -> Iterator[Fraction | None]:
    """Seconds of audio the provider decodes from one text frame (``None``: it refuses the frame)."""
    for hook in (dict, _first_wins):
        try:
            message = json.loads(frame, strict=False, object_pairs_hook=hook)
        except (ValueError, RecursionError):
            yield None
            continue
        if type(message) is not dict or message.get("message_type") != "input_audio_chunk":
            yield Fraction(0)
            continue
        audio = message.get("audio_base_64")
        if type(audio) is not str:
            yield None
            continue
        for size, rate in itertools.product(base64_readings(audio), rate_readings(message.get("sample_rate"))):
            if size is None or (rate is not None and not 0 < rate <= 192_000):
                yield None
            else:
                yield Fraction(size, fmt.bytes_per_sample * (rate or fmt.sample_rate))


_B64_NOISE = ["\n", "\r\n", " ", "\t", "\x0b", "=", "-", "_", ".", "\x01", "é", "A"]


@st.composite
def audio_text(draw: st.DrawFn) -> str:
    text = base64.b64encode(draw(st.binary(max_size=200))).decode()
    if draw(st.booleans()):
        text = text.rstrip("=")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(_B64_NOISE)) + text[at:]
    return text


_RATES = st.sampled_from([None, 16000, 8000, 44100, 48000, 4000, 12345, 0, -8000, 8000.0, "8000", True, 1e4])
_MEMBER_NAMES = st.sampled_from(["message_type", "audio_base_64", "sample_rate", "commit", "previous_text"])


@st.composite
def chunk_frames(draw: st.DrawFn) -> str:
    """Audio chunks, sometimes with a repeated key, an odd rate, noise in the base64, escapes or raw controls."""
    members: list[tuple[str, Any]] = [
        ("message_type", "input_audio_chunk"),
        ("audio_base_64", draw(audio_text())),
        ("commit", False),
    ]
    rate = draw(_RATES)
    if rate is not None or draw(st.booleans()):
        members.append(("sample_rate", rate))
    for _ in range(draw(st.sampled_from([0, 0, 1]))):
        name = draw(_MEMBER_NAMES)
        value: Any = {
            "message_type": draw(st.sampled_from(["input_audio_chunk", "commit"])),
            "audio_base_64": draw(audio_text()),
            "sample_rate": draw(_RATES),
        }.get(name)
        members.append((name, value))
    members = draw(st.permutations(members))
    ascii_only = draw(st.booleans())
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=ascii_only)}" for k, v in members) + "}"


@settings(deadline=None, max_examples=500)
@given(st.lists(chunk_frames(), min_size=1, max_size=4), st.sampled_from(sorted(ELEVENLABS_FORMATS)))
def test_elevenlabs_chunks_are_refused_or_metered_as_every_reading_decodes_them(
    frames: list[str], audio_format: str
) -> None:
    fmt = ELEVENLABS_FORMATS[audio_format]
    meter = elevenlabs_meter(f"audio_format={audio_format}")
    for frame in frames:
        before, cycles = meter.audio_exact, meter.cycles
        opened = meter.text(frame)
        assert parse_chunk(frame) == parse_chunk_reference(frame)
        if opened == UNMETERABLE:
            assert (meter.audio_exact, meter.cycles) == (before, cycles)  # nothing counted
            continue
        metered = meter.audio_exact - before
        assert set(chunk_readings(frame, fmt)) - {None} <= {metered}, frame


def test_numbers_not_in_canonical_form_are_refused() -> None:
    """The rule is simpler than the readings: only plain digits without a leading zero are read at all."""
    for value in ("+8000", "%2B8000", "08000", " 8000", "8000 ", "8_000", "%38000x", "", "0", "٨٠٠٠"):
        fmt = assemblyai_format(f"sample_rate={value}")
        assert isinstance(fmt, FormatRefusal) and fmt.error is FormatError.INVALID, value
    assert assemblyai_format("sample_rate=%38000") == AudioFormat(2, 8000)  # percent-decoding is universal


def test_whitespace_is_not_audio_and_foreign_characters_refuse_the_chunk() -> None:
    meter = elevenlabs_meter("audio_format=pcm_16000")
    wrapped = base64.encodebytes(bytes(32_000 * 5)).decode()  # 5.000 s, MIME-wrapped
    assert meter.text(json.dumps({"message_type": "input_audio_chunk", "audio_base_64": wrapped})) == 1
    assert (meter.audio_exact, meter.cycles) == (5, 1)
    for noise in ("-", "_", ".", "\x01", "é", "AA==AA=="):
        frame = json.dumps({"message_type": "input_audio_chunk", "audio_base_64": "AAAA" + noise})
        assert meter.text(frame) == UNMETERABLE
    assert (meter.audio_exact, meter.cycles) == (5, 1)


def test_repeated_keys_refuse_an_audio_chunk_only() -> None:
    meter = elevenlabs_meter("")
    assert meter.text('{"message_type":"input_audio_chunk","audio_base_64":"AAAA","commit":false,"commit":true}') == (
        UNMETERABLE
    )
    assert meter.text('{"message_type":"commit","message_type":"other","audio_base_64":"AAAA"}') == 0
    assert meter.text('{"message_type":"input_audio_chunk","audio_base_64":"AAAA","x":{"a":1,"a":2}}') == 1
    # No reading of these is an audio chunk: forwarded, metering nothing, on the fast path and the reference alike.
    for frame in (
        '{"message_type":"input_audio_chunk","message_type":"input_audio_chunk"}',
        '{"message_type":"input_audio_chunk","audio_base_64":null,"audio_base_64":1}',
    ):
        assert parse_chunk(frame) is parse_chunk_reference(frame) is None
        assert meter.text(frame) == 0


@settings(deadline=None, max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["message_type", "audio_base_64", "sample_rate"]),
            st.sampled_from(["input_audio_chunk", "AAAA", "AA-A", 16000, 4000, None]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fast_path_equals_reference_on_small_objects_with_repeats(members: list[tuple[str, Any]]) -> None:
    frame = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
    assert parse_chunk(frame) == parse_chunk_reference(frame)
    meter = elevenlabs_meter("audio_format=pcm_16000")
    if meter.text(frame) != UNMETERABLE:
        readings = set(chunk_readings(frame, ELEVENLABS_FORMATS["pcm_16000"])) - {None}
        assert readings <= {meter.audio_exact}, frame
