"""The start body → forwarded provider query (pure)."""

from __future__ import annotations

import pytest

from sttgate.core.refusals import Refusal
from sttgate.providers.assemblyai import ASSEMBLYAI
from sttgate.providers.elevenlabs import ELEVENLABS
from sttgate.pull.params import encode_params, parse_body, pull_query


def test_body_fields_and_reserved_keys() -> None:
    body = parse_body(
        {
            "audio_url": "rtmp://a/b",
            "provider": "elevenlabs",
            "callback_url": "https://h/x",
            "api_key": "sk-mai-secret",
            "TOKEN": "sttg_x",
            "language_code": "en",
        }
    )
    assert (body.audio_url, body.provider, body.callback_url) == ("rtmp://a/b", "elevenlabs", "https://h/x")
    assert body.params == [("language_code", "en")]


def test_values_are_encoded_once_in_body_order() -> None:
    query = encode_params(
        [
            ("keyterms", ["new york", "a&b"]),
            ("include_timestamps", True),
            ("vad_threshold", 0.4),
            ("min_speech_duration_ms", 100),
            ("keyterms_prompt", '["sttgate","pull"]'),
            ("skipped", None),
            ("opts", {"a": 1}),
        ]
    )
    assert query == (
        "keyterms=new%20york&keyterms=a%26b&include_timestamps=true&vad_threshold=0.4&min_speech_duration_ms=100"
        "&keyterms_prompt=%5B%22sttgate%22%2C%22pull%22%5D&opts=%7B%22a%22%3A1%7D"
    )


def test_pull_format_is_added_and_conflicts_refused() -> None:
    assert pull_query(ELEVENLABS, "language_code=en") == "language_code=en&audio_format=pcm_16000"
    assert pull_query(ASSEMBLYAI, "") == "sample_rate=16000&encoding=pcm_s16le"
    assert pull_query(ASSEMBLYAI, "sample_rate=16000") == "sample_rate=16000&encoding=pcm_s16le"
    for provider, query in ((ELEVENLABS, "audio_format=pcm_8000"), (ASSEMBLYAI, "encoding=pcm_mulaw")):
        with pytest.raises(Refusal) as info:
            pull_query(provider, query)
        assert (info.value.status, info.value.code) == (400, "invalid_request")


def test_not_an_object() -> None:
    for body in ([], "x", 3, None):
        with pytest.raises(Refusal):
            parse_body(body)
