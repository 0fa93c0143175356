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
from sttgate.core.metering import AudioFormat, BinaryMeter, FormatError, FormatRefusal, Meter
from sttgate.core.params import canonical_int, format_values
from sttgate.providers.base import Caption, MintRequest, Provider, ProviderFigures, SdkShape, TokenMint, json_object

CLOSE_STREAM = '{"type":"CloseStream"}'
MODEL = "nova-3"
# Raw encodings whose duration follows from their length: bytes per sample.
DEEPGRAM_ENCODINGS = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}
# The keys that declare the format (read strictly: docs/billing.md#strict-metering).
_FORMAT_KEYS = frozenset({"encoding", "sample_rate", "channels", "multichannel"})
# Encodings Deepgram decodes whose duration does not follow from their length.
_COMPRESSED = frozenset({"opus", "ogg-opus", "flac", "speex", "amr-nb", "amr-wb", "g729", "mp3", "aac"})
_MAX_RATE = 192000
_MAX_CHANNELS = 64
# Deepgram's own default lifetime of a grant when ``ttl_seconds`` is omitted.
GRANT_DEFAULT_SECONDS = 30
# The schemes Deepgram accepts in ``Authorization`` and as the first subprotocol (compared case-insensitively).
_SCHEMES = ("token", "bearer")


def deepgram_format(forwarded: str) -> tuple[AudioFormat, bool] | FormatRefusal:
    """The declared raw format and whether each channel is billed as its own audio, or why it is refused
    (docs/billing.md#deepgram).

    Read strictly, like every provider's format (docs/billing.md#strict-metering): ``encoding`` exactly one of the raw
    encodings; none (container audio that Deepgram sniffs) or a compressed one cannot be timed from its length
    (unsupported); ``sample_rate`` required, canonical, at most 192000; ``channels`` canonical, 1 when absent;
    ``multichannel`` exactly ``true`` or ``false``; any of these keys repeated or misspelled is refused (invalid).
    """
    values = format_values(forwarded, _FORMAT_KEYS)
    if isinstance(values, str):
        return FormatRefusal(FormatError.INVALID, values)
    encoding = values.get("encoding")
    if encoding is None or encoding.lower() in _COMPRESSED:
        return FormatRefusal(FormatError.UNSUPPORTED, DEEPGRAM.metered_formats)
    width = DEEPGRAM_ENCODINGS.get(encoding)
    if width is None:
        return FormatRefusal(
            FormatError.INVALID, f"unknown encoding {encoding!r}: use linear16, linear32, mulaw or alaw"
        )
    if "sample_rate" not in values:
        return FormatRefusal(FormatError.INVALID, f"sample_rate is required with encoding {encoding}")
    rate = canonical_int(values["sample_rate"], _MAX_RATE)
    if rate is None:
        return FormatRefusal(
            FormatError.INVALID, f"sample_rate {values['sample_rate']!r} is not an integer from 1 to {_MAX_RATE}"
        )
    channels = canonical_int(values.get("channels", "1"), _MAX_CHANNELS)
    if channels is None:
        return FormatRefusal(
            FormatError.INVALID, f"channels {values['channels']!r} is not an integer from 1 to {_MAX_CHANNELS}"
        )
    multichannel = values.get("multichannel", "false")
    if multichannel not in ("true", "false"):
        return FormatRefusal(FormatError.INVALID, f"multichannel {multichannel!r} is neither true nor false")
    return AudioFormat(width, rate, channels), multichannel == "true"


def deepgram_meter(forwarded: str) -> Meter:
    """A meter for a Deepgram session with these forwarded parameters (``Meter()``: refused at the handshake)."""
    declared = deepgram_format(forwarded)
    if isinstance(declared, FormatRefusal):
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

    def format_refusal(self, forwarded: str) -> FormatRefusal | None:
        declared = deepgram_format(forwarded)
        return declared if isinstance(declared, FormatRefusal) else None

    def audio_frame(self, pcm: bytes) -> bytes:
        return pcm

    def end_frames(self, forwarded: str = "") -> list[str]:
        return [CLOSE_STREAM]

    def end_figures(self, text: str, forwarded: str) -> ProviderFigures | None:
        """``Metadata.duration``: the audio timeline it processed; with ``multichannel=true`` each channel is billed
        as its own audio, so the comparable figure is ``duration × channels``. Deepgram reports no connection time."""
        message = json_object(text)
        if message is None or message.get("type") != "Metadata":
            return None
        duration = message.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
            return ProviderFigures(None, None)
        declared = deepgram_format(forwarded)
        channels = declared[0].channels if not isinstance(declared, FormatRefusal) and declared[1] else 1
        return ProviderFigures(float(duration) * channels, None)

    def is_end_message(self, text: str) -> bool:
        """A client's own ``CloseStream``: Deepgram then flushes, sends ``Metadata`` and closes by itself."""
        message = json_object(text)
        return message is not None and message.get("type") == "CloseStream"

    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        """``Metadata``, the session summary, is the provider's last message before its close."""
        message = json_object(text)
        return message is not None and message.get("type") == "Metadata"


DEEPGRAM = Deepgram()
