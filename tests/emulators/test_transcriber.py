"""The sans-I/O voice detector and word generator."""

from __future__ import annotations

import time

from sttgate.emulators.transcriber import (
    MULAW,
    PCM16,
    ULAW_TO_LINEAR,
    WORDS,
    AudioFormat,
    EnergyMeter,
    SpeechTracker,
    pcm16_to_mulaw,
    silence_pcm16,
    tone_pcm16,
    ulaw_encode,
    word_for,
)


def test_audio_format_durations():
    assert AudioFormat(PCM16, 16000).seconds(32000) == 1.0
    assert AudioFormat(MULAW, 8000).seconds(800) == 0.1
    assert AudioFormat(PCM16, 24000).nbytes(0.5) == 24000


def test_mulaw_round_trip_and_silence():
    assert ULAW_TO_LINEAR[0xFF] == 0 and ulaw_encode(0) == 0xFF
    for s in (-30000, -1000, -10, 0, 10, 1000, 30000):
        decoded = ULAW_TO_LINEAR[ulaw_encode(s)]
        assert abs(decoded - s) <= max(8, abs(s) // 16)


def test_energy_of_tone_and_silence():
    meter = EnergyMeter(AudioFormat(PCM16, 16000))
    blocks = list(meter.blocks(tone_pcm16(0.12) + b"\x01"))  # an odd trailing byte is ignored
    assert [round(d, 3) for d, _ in blocks] == [0.05, 0.05, 0.02]
    assert all(abs(rms - 8000 / 2**0.5 / 32768) < 0.02 for _, rms in blocks)
    assert all(rms == 0 for _, rms in meter.blocks(silence_pcm16(0.2)))
    mulaw = EnergyMeter(AudioFormat(MULAW, 8000))
    assert all(abs(rms - 0.1726) < 0.02 for _, rms in mulaw.blocks(pcm16_to_mulaw(tone_pcm16(0.1, sample_rate=8000))))
    assert all(rms == 0 for _, rms in mulaw.blocks(b"\xff" * 800))


def test_words_one_per_300ms_of_voiced_audio():
    tr = SpeechTracker(AudioFormat())
    words = [b.word for b in tr.feed(silence_pcm16(0.5) + tone_pcm16(1.0) + silence_pcm16(0.1)) if b.word]
    assert [(w.text, w.start, w.end) for w in words] == [
        ("alpha", 0.5, 0.8),
        ("bravo", 0.8, 1.1),
        ("charlie", 1.1, 1.4),
    ]
    assert tr.silence_seconds == 0.1 and not tr.in_speech and abs(tr.audio_seconds - 1.6) < 1e-9
    # a leftover of at least half a word becomes a word when speech stops; a shorter one does not
    ended = [b for b in tr.feed(tone_pcm16(0.5) + silence_pcm16(0.05))]
    assert [b.word.text for b in ended if b.word] == ["delta", "echo"]
    assert ended[-1].speech_ended and ended[-1].word.text == "echo"
    assert [b.word for b in tr.feed(tone_pcm16(0.1) + silence_pcm16(0.05)) if b.word] == []
    # flush: the same rule at a commit/endpoint
    list(tr.feed(tone_pcm16(0.2)))
    assert tr.flush().text == "foxtrot"
    assert tr.flush() is None


def test_silence_and_quiet_noise_make_no_words():
    tr = SpeechTracker(AudioFormat())
    quiet = tone_pcm16(2.0, amplitude=100)  # about -53 dBFS, under the default threshold
    assert not any(b.word for b in tr.feed(silence_pcm16(2.0) + quiet))
    assert tr.voiced_seconds == 0


def test_word_list_is_deterministic_and_cycles():
    assert word_for(0) == "alpha" and word_for(25) == "zulu" and word_for(26) == "alpha"
    assert len(WORDS) == 26


def test_analysis_is_cheap():
    tr = SpeechTracker(AudioFormat(PCM16, 48000))
    chunk = tone_pcm16(0.1, sample_rate=48000)
    t = time.perf_counter()
    for _ in range(600):  # one minute of 48 kHz audio in 100 ms chunks
        for _ in tr.feed(chunk):
            pass
    assert time.perf_counter() - t < 0.5
