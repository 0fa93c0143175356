"""Deepgram live streaming (``/v1/listen``): query-string configuration, binary audio, ``CloseStream`` end.

Metering: every binary frame is raw audio in the declared ``encoding`` at ``sample_rate``, interleaved over
``channels`` (:class:`~sttgate.core.metering.BinaryMeter`); with ``multichannel=true`` each channel is transcribed,
and billed, as its own audio. Container audio (no ``encoding``: the provider sniffs WAV/Ogg/WebM/MP3…) and compressed
encodings (``opus``, ``flac``…) cannot be timed from their length, so they are refused before the provider is
contacted (docs/billing.md#what-is-metered). Text frames are control messages (``KeepAlive``, ``Finalize``,
``CloseStream``).

Deepgram refuses a bad credential at the HTTP handshake (401/403), never in-band, so there are no in-band auth-error
markers; its API keys and grant tokens (JWTs) have no distinctive prefix to redact.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sttgate.core import refusals
from sttgate.core.metering import AudioFormat, BinaryMeter, Meter
from sttgate.core.params import positive_int, query_values
from sttgate.providers.base import Caption, MintRequest, Provider, SdkShape, TokenMint, json_object

CLOSE_STREAM = '{"type":"CloseStream"}'
MODEL = "nova-3"
# Raw encodings whose duration follows from their length: bytes per sample.
DEEPGRAM_ENCODINGS = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}
# The keys that declare the format; one given twice could be read either way, so it is not metered.
_FORMAT_KEYS = ("encoding", "sample_rate", "channels", "multichannel")
# Deepgram's own default lifetime of a grant when ``ttl_seconds`` is omitted.
GRANT_DEFAULT_SECONDS = 30
# The schemes Deepgram accepts in ``Authorization`` and as the first subprotocol (compared case-insensitively).
_SCHEMES = ("token", "bearer")


def deepgram_format(forwarded: str) -> tuple[AudioFormat, bool] | None:
    """The declared raw format and whether each channel is billed as its own audio, or ``None`` when the gateway
    cannot time the audio from its length.

    ``None`` for: no ``encoding`` (container audio), a compressed ``encoding``, a ``sample_rate`` that is absent or
    not a positive integer (Deepgram requires one with raw audio), a ``channels`` that is not a positive integer, a
    ``multichannel`` that is not ``true``/``false`` (any case), or any of these keys given twice.
    """
    keys = [pair.partition("=")[0] for pair in forwarded.split("&") if pair]
    if any(keys.count(key) > 1 for key in _FORMAT_KEYS):
        return None
    values = query_values(forwarded)
    width = DEEPGRAM_ENCODINGS.get(values.get("encoding", "").strip().lower())
    rate = positive_int(values.get("sample_rate"))
    channels = positive_int(values.get("channels", "1"))
    multichannel = values.get("multichannel", "false").strip().lower()
    if width is None or rate is None or channels is None or multichannel not in ("true", "false"):
        return None
    return AudioFormat(width, rate, channels), multichannel == "true"


def deepgram_meter(forwarded: str) -> Meter:
    """A meter for a Deepgram session with these forwarded parameters (``Meter()``: unmeterable, refused)."""
    declared = deepgram_format(forwarded)
    if declared is None:
        return Meter()
    audio_format, per_channel = declared
    return BinaryMeter(audio_format, per_channel=per_channel)


def _scheme_value(value: str) -> str | None:
    """``Token <x>`` / ``Bearer <x>`` (any case) → ``<x>``; a value without a scheme is taken raw."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() in _SCHEMES:
        return rest.strip() or None
    return value.strip() or None


def _credential(headers: Mapping[str, str], query_token: str | None) -> tuple[str | None, str | None]:
    """``Authorization: Token|Bearer <x>``, else ``Sec-WebSocket-Protocol: token|bearer, <x>`` (browsers), else
    ``?token=``. ``<x>`` is the account's key or a gateway token (told apart by its shape)."""
    authorization = headers.get("Authorization")
    if authorization and authorization.strip():
        return _scheme_value(authorization), None
    offered = [part.strip() for part in headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) >= 2 and offered[0].lower() in _SCHEMES and offered[1]:
        return offered[1], None
    return None, query_token


def _mint_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization")
    return _scheme_value(authorization) if authorization else None


def _grant_seconds(request: MintRequest) -> int:
    """``POST /v1/auth/grant {"ttl_seconds": N}``: N whole seconds (default 30), at most the gateway's maximum.

    Deepgram allows up to 3600 s; a longer lifetime than the gateway grants is capped, and the answer's
    ``expires_in`` says so, as Deepgram's own answer does.
    """
    value = request.body.get("ttl_seconds", GRANT_DEFAULT_SECONDS)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise refusals.invalid_request("ttl_seconds must be a positive integer.")
    return min(value, request.max_seconds)


class Deepgram(Provider):
    """Audio is raw binary frames; ``Authorization: Token <key>`` carries the operator's key."""

    name = "deepgram"
    default_url = "wss://api.deepgram.com/v1/listen"
    # Nova-3 monolingual streaming, USD 0.0077 per minute (docs/billing.md#prices).
    default_rate = Decimal("0.462")
    model_param = "model"
    metered_formats = "Deepgram encoding linear16, linear32, mulaw or alaw, with sample_rate"
    # The server's model when none is named is not documented; the default rate is Nova-3's.
    required_defaults = ((model_param, MODEL),)
    pull_format = (("encoding", "linear16"), ("sample_rate", "16000"))
    # After ``CloseStream`` the provider sends its last ``Results``, then ``Metadata``, then closes 1000.
    closes_after_end = True
    sdk = SdkShape(
        stream_path="/deepgram/v1/listen",
        credential=_credential,
        token_mints=(
            TokenMint(
                method="POST",
                path="/deepgram/v1/auth/grant",
                key=_mint_key,
                seconds=_grant_seconds,
                body=lambda token, seconds: {"access_token": token, "expires_in": seconds},
                reads_body=True,
            ),
        ),
        subprotocols=_SCHEMES,
    )
    demo_params = (("interim_results", "true"), ("punctuate", "true"))
    page_label = "Deepgram Nova-3"
    page_script = "deepgram.js"

    def caption(self, message: Mapping[str, Any]) -> Caption | None:
        """``Results``: final when ``is_final``, else interim (the first alternative's transcript); ``Metadata`` and
        errors as events."""
        kind = message.get("type")
        if kind == "Results":
            channel = message.get("channel")
            alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
            first = alternatives[0] if isinstance(alternatives, list) and alternatives else {}
            text = str(first.get("transcript", "")) if isinstance(first, dict) else ""
            if message.get("is_final"):
                return Caption("final", text)
            return Caption("partial", text) if text else None
        if kind == "Metadata":
            return Caption("event", "Metadata")
        return Caption("event", f"error: {dict(message)}") if kind == "Error" or "error" in message else None

    def credential_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Token {api_key}"}

    def new_meter(self, forwarded: str) -> Meter:
        return deepgram_meter(forwarded)

    def audio_frame(self, pcm: bytes) -> bytes:
        return pcm

    def end_frames(self, forwarded: str = "") -> list[str]:
        return [CLOSE_STREAM]

    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        """``Metadata``, the session summary, is the provider's last message before its close."""
        message = json_object(text)
        return message is not None and message.get("type") == "Metadata"


DEEPGRAM = Deepgram()
