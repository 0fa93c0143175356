"""Per-frame metering cost: AssemblyAI 100 ms binary frames, ElevenLabs 100 ms chunks (fast path and fallback).

Run: ``.venv/bin/python bench/bench_metering.py``. Prints microseconds per frame; asserts nothing.
"""

from __future__ import annotations

import base64
import json
import os
import timeit

from sttgate.core.metering import base64_audio_bytes
from sttgate.providers.assemblyai import ASSEMBLYAI
from sttgate.providers.elevenlabs import ELEVENLABS, _envelope, parse_chunk, parse_chunk_reference

FRAMES = 200_000


def per_frame_us(statement: object, number: int = FRAMES) -> float:
    best = min(timeit.repeat(statement, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e6


def main() -> None:
    pcm = os.urandom(3200)  # 100 ms of 16 kHz s16le
    usual = json.dumps(
        {
            "message_type": "input_audio_chunk",
            "audio_base_64": base64.b64encode(pcm).decode(),
            "commit": False,
            "sample_rate": 16000,
            "previous_text": None,
        }
    )
    one_second = usual.replace(base64.b64encode(pcm).decode(), base64.b64encode(os.urandom(32_000)).decode())
    # A non-ASCII previous_text is escaped by json.dumps: the backslash sends the frame to the fallback.
    unusual = usual.replace('"previous_text": null', '"previous_text": "caf\\u00e9"')

    b64 = base64.b64encode(pcm).decode()
    envelope = usual.replace(b64, "")
    plain_json = json.JSONDecoder(strict=False)

    aai = ASSEMBLYAI.new_meter("sample_rate=16000")
    el = ELEVENLABS.new_meter("audio_format=pcm_16000")
    rows = [
        ("assemblyai Meter.binary, 100 ms frame", lambda: aai.binary(pcm)),
        ("elevenlabs Meter.text, 100 ms chunk (fast path)", lambda: el.text(usual)),
        ("elevenlabs Meter.text, 100 ms chunk (fallback)", lambda: el.text(unusual)),
        ("elevenlabs Meter.text, 1 s chunk (fast path)", lambda: el.text(one_second)),
        ("elevenlabs parse_chunk (fast path)", lambda: parse_chunk(usual)),
        ("elevenlabs parse_chunk_reference (json.loads)", lambda: parse_chunk_reference(usual)),
        ("elevenlabs base64 alphabet count, 100 ms", lambda: base64_audio_bytes(b64)),
        ("elevenlabs envelope, uncached, repeated-key check", lambda: _envelope.__wrapped__(envelope)),
        ("elevenlabs envelope, uncached, plain json (before)", lambda: plain_json.decode(envelope)),
    ]
    for label, statement in rows:
        print(f"{label:<50} {per_frame_us(statement):8.3f} µs/frame")


if __name__ == "__main__":
    main()
