"""AssemblyAI Universal Streaming v3: binary PCM audio, ``Terminate`` end.

Metering: every binary frame is raw audio in the declared encoding (:class:`~sttgate.core.metering.BinaryMeter`);
text frames are control messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from sttgate.core.metering import AudioFormat, BinaryMeter, Meter
from sttgate.core.params import positive_int, query_values
from sttgate.core.refusals import Refusal
from sttgate.providers.base import MintRequest, Provider, SdkShape, TokenMint, bearer_or_raw, json_object

TERMINATE = '{"type":"Terminate"}'

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
    return AudioFormat(width, positive_int(values.get("sample_rate")) or ASSEMBLYAI_DEFAULT_RATE)


def assemblyai_meter(forwarded: str) -> Meter:
    """A meter for an AssemblyAI session with these forwarded parameters (binary frames are audio)."""
    fmt = assemblyai_format(forwarded)
    return Meter() if fmt is None else BinaryMeter(fmt)


def _credential(headers: Mapping[str, str], query_token: str | None) -> tuple[str | None, str | None]:
    """``Authorization`` (raw or Bearer; the SDK sends a temporary token there too), else ``?token=``."""
    header = bearer_or_raw(headers.get("Authorization"))
    return (header, None) if header else (None, query_token)


def _mint_key(headers: Mapping[str, str]) -> str | None:
    return bearer_or_raw(headers.get("Authorization"))


# ``max_session_duration_seconds`` as the provider takes it (docs/contract.md#tokens).
SESSION_CAP_RANGE = (60, 10800)


def _mint_seconds(request: MintRequest) -> int:
    """``GET /v3/token?expires_in_seconds=N``."""
    if "expires_in_seconds" not in request.query:
        raise Refusal(400, "invalid_request", "expires_in_seconds is required.")
    return request.lifetime(request.query["expires_in_seconds"])


def _mint_session_cap(request: MintRequest) -> int | None:
    """``max_session_duration_seconds`` (60..10800, as the provider takes it) caps the session the token opens."""
    value = request.query.get("max_session_duration_seconds")
    if value is None:
        return None
    low, high = SESSION_CAP_RANGE
    cap = positive_int(value)
    if cap is None or not low <= cap <= high:
        raise Refusal(400, "invalid_request", f"max_session_duration_seconds must be an integer from {low} to {high}.")
    return cap


class AssemblyAI(Provider):
    """Audio is raw binary frames; ``Authorization`` carries the raw key (no ``Bearer``)."""

    name = "assemblyai"
    default_url = "wss://streaming.assemblyai.com/v3/ws"
    default_rate = Decimal("0.15")
    model_param = "speech_model"
    metered_formats = "AssemblyAI encoding pcm_s16le or pcm_mulaw"
    required_defaults = (("sample_rate", "16000"),)
    pull_format = (("sample_rate", "16000"), ("encoding", "pcm_s16le"))
    # The provider refuses a binary frame under 50 ms: 1600 bytes at 16 kHz s16le.
    min_pull_frame_bytes = 1600
    # After ``Terminate`` the provider flushes the turn, sends ``Termination`` and closes 1000 "Session Ended".
    closes_after_end = True
    auth_error_markers = (b"Unauthorized Connection",)
    sdk = SdkShape(
        stream_path="/assemblyai/v3/ws",
        credential=_credential,
        token_mints=(
            TokenMint(
                method="GET",
                path="/assemblyai/v3/token",
                key=_mint_key,
                seconds=_mint_seconds,
                body=lambda token, seconds: {"token": token, "expires_in_seconds": seconds},
                session_cap=_mint_session_cap,
            ),
        ),
    )
    demo_params = (("format_turns", "true"),)
    page_label = "AssemblyAI Universal Streaming"
    page_script = "assemblyai.js"

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

    def is_end_message(self, text: str) -> bool:
        """A client's own ``Terminate``: the provider then closes by itself; a second one is not sent."""
        message = json_object(text)
        return message is not None and message.get("type") == "Terminate"


ASSEMBLYAI = AssemblyAI()
