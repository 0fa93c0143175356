import base64
import itertools
import json
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttgate.core.metering import (
    UNMETERABLE,
    UNREADABLE,
    AudioFormat,
    BinaryMeter,
    FormatError,
    FormatRefusal,
    Meter,
    base64_audio_bytes,
)
from sttgate.providers.assemblyai import assemblyai_format, assemblyai_meter
from sttgate.providers.elevenlabs import (
    ELEVENLABS_RATES,
    TICKS_PER_SECOND,
    elevenlabs_format,
    elevenlabs_meter,
    parse_chunk,
    parse_chunk_reference,
)


def chunk(pcm: bytes, sample_rate: object = 16000, **extra: object) -> str:
    """An input_audio_chunk as the SDKs send it; ``sample_rate=None`` leaves the member out."""
    message: dict[str, object] = {"message_type": "input_audio_chunk", "audio_base_64": base64.b64encode(pcm).decode()}
    message["commit"] = False
    if sample_rate is not None:
        message["sample_rate"] = sample_rate
    message.update(extra)
    return json.dumps(message)


def feed_binary(meter: Meter, sizes: list[int]) -> list[int]:
    return [meter.binary(b"\0" * n) for n in sizes]


# --- AssemblyAI ---------------------------------------------------------------------------------------------------


def test_spec_example_twelve_seconds_is_three_cycles() -> None:
    meter = assemblyai_meter("sample_rate=16000")
    opened = feed_binary(meter, [3200] * 120)  # 120 frames of 100 ms
    assert meter.audio_exact == 12
    assert meter.audio_seconds == 12.0
    assert meter.cycles == 3
    # Cycle 1 opens on the first audio, cycle 2 on the frame after 5.0 s, cycle 3 on the frame after 10.0 s.
    assert [i for i, n in enumerate(opened) if n] == [0, 50, 100]
    assert sum(opened) == 3


def test_exactly_five_seconds_is_one_cycle_and_one_more_byte_is_two() -> None:
    meter = assemblyai_meter("")
    assert meter.binary(b"\0" * 160_000) == 1
    assert (meter.cycles, meter.audio_exact) == (1, 5)
    assert meter.binary(b"\0") == 1
    assert meter.cycles == 2


def test_no_audio_costs_nothing() -> None:
    meter = assemblyai_meter("")
    assert meter.binary(b"") == 0
    assert meter.text('{"type":"Terminate"}') == 0
    assert (meter.cycles, meter.audio_exact) == (0, 0)


def test_text_frames_are_not_audio_for_assemblyai() -> None:
    meter = assemblyai_meter("")
    assert meter.text(chunk(b"\0" * 100_000)) == 0
    assert meter.audio_exact == 0


def test_mulaw_8k() -> None:
    meter = assemblyai_meter("encoding=pcm_mulaw&sample_rate=8000")
    assert meter.audio_format == AudioFormat(1, 8000)
    feed_binary(meter, [800] * 60)  # 6 s of 100 ms μ-law frames
    assert meter.audio_exact == 6
    assert meter.cycles == 2


def test_huge_frame_opens_several_cycles() -> None:
    meter = assemblyai_meter("")
    assert meter.binary(b"\0" * (32_000 * 16)) == 4  # 16 s
    assert meter.cycles == 4


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", AudioFormat(2, 16000)),
        ("sample_rate=8000", AudioFormat(2, 8000)),
        ("encoding=pcm_mulaw&sample_rate=8000", AudioFormat(1, 8000)),
        # Strict metering (issue 11): what the provider might read otherwise is refused, never defaulted.
        ("encoding=PCM_MULAW&sample_rate=8000", FormatError.INVALID),
        ("sample_rate=abc", FormatError.INVALID),
        ("sample_rate=0", FormatError.INVALID),
        ("sample_rate=-8000", FormatError.INVALID),
        ("sample_rate=8000&sample_rate=48000", FormatError.INVALID),
        ("encoding=opus", FormatError.UNSUPPORTED),
        ("encoding=ogg_opus&sample_rate=48000", FormatError.UNSUPPORTED),
    ],
)
def test_assemblyai_formats(query: str, expected: AudioFormat | FormatError) -> None:
    fmt = assemblyai_format(query)
    assert (fmt.error if isinstance(fmt, FormatRefusal) else fmt) == expected


def test_compressed_encoding_is_relayed_unmetered() -> None:
    meter = assemblyai_meter("encoding=opus")
    assert meter.audio_format is None
    assert meter.binary(b"\0" * 1_000_000) == 0
    assert (meter.cycles, meter.audio_exact) == (0, 0)


_sizes = st.lists(st.integers(min_value=0, max_value=70_000), max_size=40)


@settings(deadline=None)
@given(_sizes, st.sampled_from(["", "encoding=pcm_mulaw&sample_rate=8000", "sample_rate=44100", "sample_rate=7"]))
def test_binary_cycles_are_ceil_of_audio(sizes: list[int], query: str) -> None:
    meter = assemblyai_meter(query)
    opened = feed_binary(meter, sizes)
    fmt = assemblyai_format(query)
    assert isinstance(fmt, AudioFormat)
    assert meter.audio_exact == Fraction(sum(sizes), fmt.bytes_per_second)
    assert meter.cycles == sum(opened) == math.ceil(meter.audio_exact / 5)


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2_000_000), st.lists(st.integers(min_value=1, max_value=10**6), max_size=20))
def test_any_split_gives_the_same_cycles(total: int, cuts: list[int]) -> None:
    points = sorted({c % (total + 1) for c in cuts} | {0, total})
    sizes = [b - a for a, b in itertools.pairwise(points)]
    whole, split = assemblyai_meter(""), assemblyai_meter("")
    whole.binary(b"\0" * total)
    feed_binary(split, sizes)
    assert (split.cycles, split.audio_exact) == (whole.cycles, whole.audio_exact)


@settings(deadline=None)
@given(_sizes)
def test_cycle_opens_exactly_when_audio_first_exceeds_a_multiple_of_five_seconds(sizes: list[int]) -> None:
    meter = assemblyai_meter("")
    before = 0
    for n in sizes:
        opened = meter.binary(b"\0" * n)
        after = before + n
        assert opened == -(-after // 160_000) - -(-before // 160_000)
        before = after


# --- refund --------------------------------------------------------------------------------------------------------


def test_refund_last_forgets_the_unpaid_frame() -> None:
    meter = assemblyai_meter("")
    assert meter.binary(b"\0" * 160_000) == 1
    assert meter.binary(b"\0" * 3200) == 1
    meter.refund_last(1)
    assert (meter.cycles, meter.audio_exact) == (1, 5)
    # The same frame, if it comes again and is paid, opens the same cycle.
    assert meter.binary(b"\0" * 3200) == 1
    assert meter.cycles == 2


def test_refund_last_refuses_a_frame_that_is_not_the_last() -> None:
    meter = assemblyai_meter("")
    meter.binary(b"\0" * 3200)
    meter.binary(b"\0" * 3200)
    with pytest.raises(RuntimeError):
        meter.refund_last(1)
    assert meter.cycles == 1


def test_refund_last_refuses_a_wrong_count_and_a_second_refund() -> None:
    meter = assemblyai_meter("")
    assert meter.binary(b"\0" * 3200) == 1
    with pytest.raises(RuntimeError):
        meter.refund_last(2)
    meter.refund_last(1)
    with pytest.raises(RuntimeError):
        meter.refund_last(1)
    assert (meter.cycles, meter.audio_exact) == (0, 0)


def test_refund_of_elevenlabs_chunk() -> None:
    meter = elevenlabs_meter("audio_format=pcm_16000")
    assert meter.text(chunk(b"\0" * 3200)) == 1
    meter.refund_last(1)
    assert (meter.cycles, meter.audio_exact) == (0, 0)


# --- ElevenLabs ----------------------------------------------------------------------------------------------------


def test_elevenlabs_pcm_16000_default() -> None:
    meter = elevenlabs_meter("model_id=scribe_v2_realtime")
    opened = [meter.text(chunk(b"\0" * 3200)) for _ in range(120)]
    assert meter.audio_exact == 12
    assert meter.cycles == sum(opened) == 3
    assert [i for i, n in enumerate(opened) if n] == [0, 50, 100]


def test_elevenlabs_pcm_44100() -> None:
    meter = elevenlabs_meter("audio_format=pcm_44100")
    meter.text(chunk(b"\0" * 88_200 * 5, sample_rate=44100))
    assert (meter.audio_exact, meter.cycles) == (5, 1)
    meter.text(chunk(b"\0\0", sample_rate=44100))
    assert meter.audio_exact == 5 + Fraction(1, 44100)
    assert meter.cycles == 2


def test_elevenlabs_ulaw_8000() -> None:
    meter = elevenlabs_meter("audio_format=ulaw_8000")
    meter.text(chunk(b"\0" * 8000 * 7, sample_rate=8000))
    assert (meter.audio_exact, meter.cycles) == (7, 2)


def test_chunk_sample_rate_overrides_the_session_rate() -> None:
    meter = elevenlabs_meter("audio_format=pcm_16000")
    meter.text(chunk(b"\0" * 48_000, sample_rate=48000))  # 0.5 s at 48 kHz
    meter.text(chunk(b"\0" * 16_000, sample_rate=None))  # 0.5 s at the session's 16 kHz
    meter.text(chunk(b"\0" * 22_050, sample_rate=22050))  # 0.5 s
    meter.text(chunk(b"\0" * 1, sample_rate=44100))  # half a sample at 44.1 kHz
    assert meter.audio_exact == Fraction(3, 2) + Fraction(1, 88_200)


def test_a_chunk_without_a_rate_is_metered_at_the_session_rate() -> None:
    meter = elevenlabs_meter("audio_format=pcm_8000")
    meter.text(chunk(b"\0" * 16_000, sample_rate=None))
    meter.text(chunk(b"\0" * 16_000, previous_text=None, sample_rate=None).replace("}", ', "sample_rate": null}'))
    assert meter.audio_exact == 2


@pytest.mark.parametrize("rate", [0, -16000, 4000, 12345, 10**9, 16000.0, "16000", True])
def test_unusable_chunk_rates_are_unmeterable(rate: object) -> None:
    # Strict metering (issue 11): these fell back to the session rate; the provider may decode them at their own.
    meter = elevenlabs_meter("audio_format=pcm_8000")
    assert meter.text(chunk(b"\0" * 16_000, sample_rate=rate)) == UNMETERABLE
    assert (meter.audio_exact, meter.cycles) == (0, 0)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", AudioFormat(2, 16000)),
        ("audio_format=pcm_24000", AudioFormat(2, 24000)),
        ("audio_format=ulaw_8000", AudioFormat(1, 8000)),
        ("encoding=pcm_16000&sample_rate=16000", AudioFormat(2, 16000)),
        ("audio_format=pcm_48000&encoding=pcm_48000&sample_rate=48000", AudioFormat(2, 48000)),
        ("sample_rate=16000", AudioFormat(2, 16000)),
        # Strict metering (issue 11): these were guessed; the provider may read them otherwise.
        ("audio_format=mp3_44100", FormatError.INVALID),
        ("encoding=pcm_48000&sample_rate=48000", FormatError.INVALID),
        ("encoding=ulaw_8000", FormatError.INVALID),
        ("sample_rate=22050", FormatError.INVALID),
        ("sample_rate=12345", FormatError.INVALID),
        ("audio_format=pcm_8000&encoding=pcm_48000", FormatError.INVALID),
    ],
)
def test_elevenlabs_formats(query: str, expected: AudioFormat | FormatError) -> None:
    fmt = elevenlabs_format(query)
    assert (fmt.error if isinstance(fmt, FormatRefusal) else fmt) == expected


def test_elevenlabs_non_audio_frames_meter_nothing() -> None:
    meter = elevenlabs_meter("")
    frames = [
        '{"message_type":"input_audio_chunk","audio_base_64":"","commit":true,"sample_rate":16000}',
        '{"message_type":"commit","audio_base_64":"AAAA"}',
        '{"message_type":"input_audio_chunk","audio_base_64":null}',
        '{"message_type":"input_audio_chunk","audio_base_64":["AAAA"]}',
        '["input_audio_chunk","AAAA"]',
        '{"message_type":"input_audio_chunk","audio_base_64":"AAAA"',
        "not json",
        "[" * 100_000,
        "",
    ]
    for frame in frames:
        assert meter.text(frame) == 0
    assert meter.binary(b"\0" * 64_000) == 0
    assert (meter.cycles, meter.audio_exact) == (0, 0)


def test_elevenlabs_any_split_same_cycles() -> None:
    audio = bytes(range(256)) * 700
    whole, split = elevenlabs_meter(""), elevenlabs_meter("")
    whole.text(chunk(audio))
    for i in range(0, len(audio), 3333):
        split.text(chunk(audio[i : i + 3333]))
    assert (split.audio_exact, split.cycles) == (whole.audio_exact, whole.cycles) == (Fraction(179_200, 32_000), 2)


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20_000), st.sampled_from([*sorted(ELEVENLABS_RATES), None])), max_size=30))
def test_mixed_rates_are_exact(chunks: list[tuple[int, int | None]]) -> None:
    meter = elevenlabs_meter("audio_format=ulaw_8000")
    opened = sum(meter.text(chunk(b"\0" * n, sample_rate=rate)) for n, rate in chunks)
    expected = sum((Fraction(n, rate or 8000) for n, rate in chunks), Fraction(0))
    assert meter.audio_exact == expected
    assert meter.cycles == opened == math.ceil(expected / 5)


def test_ticks_are_whole_for_every_rate_and_width() -> None:
    assert all(TICKS_PER_SECOND % (width * rate) == 0 for width in (1, 2) for rate in ELEVENLABS_RATES)


# --- base64 length and the fast path -------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_base64_length_matches_decoding(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert base64_audio_bytes(encoded) == len(data)
    assert base64_audio_bytes(encoded.rstrip("=")) == len(data)


def test_malformed_base64_is_metered_by_length_never_below_what_decodes() -> None:
    assert base64_audio_bytes("====") == 0
    assert base64_audio_bytes("A") == 0
    assert base64_audio_bytes("AA AA") == 3  # a lenient decoder gets 3 bytes from these 4 letters


_b64 = st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())
_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.text(alphabet="abc =", max_size=8),
)
_value = st.one_of(
    _json_scalar,
    _b64,
    st.sampled_from(["input_audio_chunk", "commit", "audio_base_64", 16000, 44100, 8000, 16000.0]),
    st.lists(_json_scalar, max_size=2),
    st.dictionaries(st.text(max_size=3), _json_scalar, max_size=2),
)
_name = st.sampled_from(["message_type", "audio_base_64", "sample_rate", "commit", "previous_text", "x"])


@st.composite
def frames(draw: st.DrawFn) -> str:
    """JSON-ish frames: usual chunks, random key orders and spacing, escapes, duplicates, and damaged text."""
    members = draw(st.lists(st.tuples(_name, _value), max_size=6))
    if draw(st.booleans()):
        members += [("message_type", "input_audio_chunk"), ("audio_base_64", draw(_b64))]
    members = draw(st.permutations(members))
    ascii_only = draw(st.booleans())
    colon = draw(st.sampled_from([":", ": ", " :", " : ", ":\n", ":\t "]))
    comma = draw(st.sampled_from([",", ", ", " ,\n"]))
    parts = [
        json.dumps(k, ensure_ascii=ascii_only) + colon + json.dumps(v, ensure_ascii=ascii_only) for k, v in members
    ]
    text = draw(st.sampled_from(["", " ", "\n"])) + "{" + comma.join(parts) + "}" + draw(st.sampled_from(["", " "]))
    if draw(st.integers(0, 3)) == 0:
        text = text.replace('"audio_base_64"', '"audio\\u005fbase_64"', 1)
    damage = draw(st.sampled_from([0, 0, 0, 1, 2]))
    for _ in range(damage):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(['"', "\\", "}", "{", ",", ":", "\x01", "=", "", "]"])) + text[at:]
    return text


@settings(deadline=None)
@given(frames())
def test_fast_path_equals_reference(frame: str) -> None:
    assert parse_chunk(frame) == parse_chunk_reference(frame)


@settings(deadline=None)
@given(st.text(alphabet='{}[]":,\\ =Aa1-_\x00eu', max_size=60))
def test_fast_path_equals_reference_on_garbage(frame: str) -> None:
    prefixes = ["", '{"audio_base_64":"', '{"message_type":"input_audio_chunk","audio_base_64":']
    prefixes.append('{"message_type":"input_audio_chunk","audio_base_64":"AAAA"')
    for prefix in prefixes:
        assert parse_chunk(prefix + frame) == parse_chunk_reference(prefix + frame)


@settings(deadline=None)
@given(st.binary(max_size=5000), st.sampled_from([16000, 44100, None]), st.sampled_from([None, "", "ctx"]))
def test_usual_frames_take_the_fast_path(pcm: bytes, rate: int | None, previous_text: str | None) -> None:
    frame = chunk(pcm, sample_rate=rate, previous_text=previous_text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sttgate.providers.elevenlabs.parse_chunk_reference", None)
        assert parse_chunk(frame) == (len(pcm), rate)


def test_fast_path_examples() -> None:
    pcm = b"\x01\x02" * 1600
    usual = chunk(pcm, previous_text=None)
    assert parse_chunk(usual) == (3200, 16000)
    compact = usual.replace(": ", ":").replace(", ", ",")
    assert parse_chunk(compact) == (3200, 16000)
    # A duplicate key spelled with an escape: providers resolve repeats differently, so the chunk is unreadable
    # (strict metering, issue 11: this was "the last one wins").
    dup = compact[:-1] + ',"audio\\u005fbase_64":""}'
    assert parse_chunk(dup) == parse_chunk_reference(dup) == UNREADABLE
    # A raw control character inside the audio string: decoders skip it or refuse the chunk (issue 11: was counted).
    ctrl = '{"message_type":"input_audio_chunk","audio_base_64":"AA\x01A"}'
    assert parse_chunk(ctrl) == UNREADABLE
    # Raw whitespace (MIME-wrapped base64) is tolerated (strict=False) and not billed.
    wrapped = '{"message_type":"input_audio_chunk","audio_base_64":"AA\nAA"}'
    assert parse_chunk(wrapped) == (3, None)


def test_binary_meter_ignores_text() -> None:
    meter = BinaryMeter(AudioFormat(2, 16000))
    assert meter.text("AAAA") == 0
