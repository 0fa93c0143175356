"""AssemblyAI Universal Streaming v3: binary PCM audio, ``Terminate`` end.

Metering: every binary frame is raw audio in the declared encoding (:class:`~sttgate.core.metering.BinaryMeter`);
text frames are control messages. The declared format is read strictly (docs/billing.md#assemblyai): what the
gateway cannot read exactly as the provider will is refused at the handshake.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sttgate.core import refusals
from sttgate.core.metering import AudioFormat, BinaryMeter, FormatError, FormatRefusal, Meter
from sttgate.core.params import canonical_int, format_values
from sttgate.providers.base import (
    Caption,
    MintRequest,
    Provider,
    ProviderFigures,
    SdkShape,
    TokenMint,
    bearer_or_raw,
    json_object,
)

TERMINATE = '{"type":"Terminate"}'

ASSEMBLYAI_DEFAULT_RATE = 16000
ASSEMBLYAI_ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}
# Encodings the provider accepts whose duration cannot be known from their length.
ASSEMBLYAI_COMPRESSED = frozenset({"opus", "ogg_opus", "aac"})
# The highest sample rate metered: a larger number may wrap around in the provider's integer type.
ASSEMBLYAI_MAX_RATE = 192_000
_FORMAT_KEYS = frozenset({"encoding", "sample_rate"})
METERED_FORMATS = "AssemblyAI encoding pcm_s16le or pcm_mulaw"


def assemblyai_format(forwarded: str) -> AudioFormat | FormatRefusal:
    """The declared AssemblyAI format, or why it is refused (docs/billing.md#assemblyai).

    ``encoding`` is exactly ``pcm_s16le`` (the default when absent) or ``pcm_mulaw``; a compressed encoding (opus,
    aac…) cannot be metered by length; any other spelling is refused rather than guessed. ``sample_rate`` is a
    canonical integer from 1 to 192000, 16000 when absent (the gateway then sends ``sample_rate=16000`` upstream).
    Either key given twice, or spelled another way, is refused.
    """
    values = format_values(forwarded, _FORMAT_KEYS)
    if isinstance(values, str):
        return FormatRefusal(FormatError.INVALID, values)
    encoding = values.get("encoding", "pcm_s16le")
    width = ASSEMBLYAI_ENCODINGS.get(encoding)
    if width is None:
        if encoding.strip().lower() in ASSEMBLYAI_COMPRESSED:
            return FormatRefusal(FormatError.UNSUPPORTED, METERED_FORMATS)
        return FormatRefusal(FormatError.INVALID, f"unknown encoding {encoding!r}: use pcm_s16le or pcm_mulaw")
    if "sample_rate" not in values:
        return AudioFormat(width, ASSEMBLYAI_DEFAULT_RATE)
    rate = canonical_int(values["sample_rate"], ASSEMBLYAI_MAX_RATE)
    if rate is None:
        return FormatRefusal(
            FormatError.INVALID,
            f"sample_rate {values['sample_rate']!r} is not an integer from 1 to {ASSEMBLYAI_MAX_RATE} in plain digits",
        )
    return AudioFormat(width, rate)


def assemblyai_meter(forwarded: str) -> Meter:
    """A meter for an AssemblyAI session with these forwarded parameters (binary frames are audio).

    A compressed encoding gets a meter that meters nothing (the handshake refuses it first); a refused format raises
    ``ValueError``: the gateway never meters a value the client set as another."""
    fmt = assemblyai_format(forwarded)
    if isinstance(fmt, AudioFormat):
        return BinaryMeter(fmt)
    if fmt.error is FormatError.UNSUPPORTED:
        return Meter()
    raise ValueError(fmt.detail)


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
        raise refusals.invalid_request("expires_in_seconds is required.")
    return request.lifetime(request.query["expires_in_seconds"])


def _mint_session_cap(request: MintRequest) -> int | None:
    """``max_session_duration_seconds`` (60..10800, as the provider takes it) caps the session the token opens."""
    value = request.query.get("max_session_duration_seconds")
    if value is None:
        return None
    low, high = SESSION_CAP_RANGE
    cap = canonical_int(value, high)
    if cap is None or cap < low:
        raise refusals.invalid_request(f"max_session_duration_seconds must be an integer from {low} to {high}.")
    return cap


def _seconds(value: object) -> float | None:
    """A reported duration: a JSON number that is not negative, else nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


class AssemblyAI(Provider):
    """Audio is raw binary frames; ``Authorization`` carries the raw key (no ``Bearer``)."""

    name = "assemblyai"
    default_url = "wss://streaming.assemblyai.com/v3/ws"
    default_rate = Decimal("0.15")
    model_param = "speech_model"
    metered_formats = METERED_FORMATS
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

    def format_refusal(self, forwarded: str) -> FormatRefusal | None:
        fmt = assemblyai_format(forwarded)
        return None if isinstance(fmt, AudioFormat) else fmt

    def audio_frame(self, pcm: bytes) -> bytes:
        return pcm

    def end_frames(self, forwarded: str = "") -> list[str]:
        return [TERMINATE]

    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        message = json_object(text)
        return message is not None and message.get("type") == "Termination"

    def caption(self, message: Mapping[str, Any]) -> Caption | None:
        """``Turn`` messages: a partial until ``end_of_turn``; with ``format_turns`` the formatted turn is the final."""
        kind = message.get("type")
        if kind == "Turn":
            text = str(message.get("transcript", ""))
            if message.get("end_of_turn"):
                return Caption("final", text) if message.get("turn_is_formatted") or not text else None
            return Caption("partial", text) if text else None
        if kind in ("Begin", "Termination"):
            return Caption("event", str(kind))
        return Caption("event", f"error: {dict(message)}") if "error" in message else None

    def end_figures(self, text: str, forwarded: str) -> ProviderFigures | None:
        """``Termination``: whole seconds of audio received and of connection time."""
        message = json_object(text)
        if message is None or message.get("type") != "Termination":
            return None
        return ProviderFigures(
            _seconds(message.get("audio_duration_seconds")), _seconds(message.get("session_duration_seconds"))
        )

    def is_end_message(self, text: str) -> bool:
        """A client's own ``Terminate``: the provider then closes by itself; a second one is not sent."""
        message = json_object(text)
        return message is not None and message.get("type") == "Terminate"


ASSEMBLYAI = AssemblyAI()
