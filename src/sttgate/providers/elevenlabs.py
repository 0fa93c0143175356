"""ElevenLabs Scribe realtime (protocols/elevenlabs-realtime-stt.md): base64 audio in JSON, commit-then-close end."""

from __future__ import annotations

import base64
from decimal import Decimal

from sttgate.config import Settings
from sttgate.core.metering import Meter, elevenlabs_format, elevenlabs_meter
from sttgate.core.params import query_values
from sttgate.providers.base import PULL_SAMPLE_RATE, Provider, json_object

MODEL_ID = "scribe_v2_realtime"
# With include_timestamps the provider sends this after the committed_transcript of the same segment.
_TIMESTAMPED = "committed_transcript_with_timestamps"
# Answers to a commit: the transcript, or a refusal when under 0.3 s of audio was uncommitted (nothing more follows).
_COMMIT_ANSWERS = frozenset({"committed_transcript", "commit_throttled"})


def _chunk(audio_base_64: str, commit: bool, sample_rate: int) -> str:
    flag = "true" if commit else "false"
    return (
        f'{{"message_type":"input_audio_chunk","audio_base_64":"{audio_base_64}",'
        f'"commit":{flag},"sample_rate":{sample_rate}}}'
    )


class ElevenLabs(Provider):
    """Audio is ``input_audio_chunk`` JSON text frames; ``xi-api-key`` carries the key; no terminate message exists."""

    name = "elevenlabs"
    required_defaults = (("model_id", MODEL_ID),)
    # There is no end-of-session message: the gateway commits, waits for the transcript (or a timeout), closes 1000.
    closes_after_end = False

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

    def base_url(self, settings: Settings) -> str:
        return settings.elevenlabs_url

    def operator_key(self, settings: Settings) -> str:
        return settings.elevenlabs_api_key.get_secret_value()

    def rate(self, settings: Settings) -> Decimal:
        return settings.rate_elevenlabs


ELEVENLABS = ElevenLabs()
