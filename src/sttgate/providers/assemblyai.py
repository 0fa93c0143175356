"""AssemblyAI Universal Streaming v3 (protocols/assemblyai-streaming-v3.md): binary PCM audio, ``Terminate`` end."""

from __future__ import annotations

from decimal import Decimal

from sttgate.config import Settings
from sttgate.core.metering import Meter, assemblyai_meter
from sttgate.providers.base import Provider, json_object

TERMINATE = '{"type":"Terminate"}'


class AssemblyAI(Provider):
    """Audio is raw binary frames; ``Authorization`` carries the raw key (no ``Bearer``)."""

    name = "assemblyai"
    required_defaults = (("sample_rate", "16000"),)
    # After ``Terminate`` the provider flushes the turn, sends ``Termination`` and closes 1000 "Session Ended".
    closes_after_end = True

    def credential_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": api_key}

    def new_meter(self, forwarded: str) -> Meter:
        return assemblyai_meter(forwarded)

    def audio_frame(self, pcm: bytes) -> bytes:
        return pcm

    def end_frames(self, forwarded: str = "") -> list[str]:
        return [TERMINATE]

    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        message = json_object(text)
        return message is not None and message.get("type") == "Termination"

    def base_url(self, settings: Settings) -> str:
        return settings.assemblyai_url

    def operator_key(self, settings: Settings) -> str:
        return settings.assemblyai_api_key.get_secret_value()

    def rate(self, settings: Settings) -> Decimal:
        return settings.rate_assemblyai


ASSEMBLYAI = AssemblyAI()
