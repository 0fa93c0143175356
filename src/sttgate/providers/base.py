"""What the gateway needs to know about one provider, in one place.

The rest of the gateway is provider-agnostic: it asks the :class:`Provider` for everything that differs between
providers (upstream URL and credential, price, meter, pull framing, how a session ends, in-band auth errors, secrets
to redact, the routes its own SDK expects), so adding a provider is one module and one line in
``sttgate.providers``. Everything here is data or small pure methods: no sockets, no web framework.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from sttgate.core.metering import FormatError, FormatRefusal, Meter
from sttgate.core.params import with_defaults

# Pull mode (docs/pull.md) feeds FFmpeg output: PCM s16le, 16 kHz, mono.
PULL_SAMPLE_RATE = 16000

Pairs = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ProviderFigures:
    """What a provider reports about a session it ended (docs/billing.md#reconciliation), in the gateway's terms:
    ``audio_seconds`` as the gateway meters it (e.g. × channels where each channel is billed), ``None`` where the
    provider says nothing."""

    audio_seconds: float | None
    session_seconds: float | None


@dataclass(frozen=True)
class Caption:
    """What a provider message means to a captioning app (``sttgate demo``): a partial or final transcript, or a
    notable event (session start/end, an error) shown by its kind."""

    kind: Literal["partial", "final", "event"]
    text: str


@dataclass(frozen=True)
class ProviderSettings:
    """The operator's settings for one provider (see ``Settings.provider``)."""

    url: str
    api_key: SecretStr
    rate: Decimal  # USD per hour of metered audio


@dataclass(frozen=True)
class MintRequest:
    """A provider-shaped token request, as the web layer read it."""

    path_params: Mapping[str, str]
    query: Mapping[str, str]
    # The JSON object body, for mints with ``reads_body`` (else empty).
    body: Mapping[str, Any]
    # The gateway's lifetime rule: a value (str or int) → whole seconds within its limits, else a 400 refusal.
    lifetime: Callable[[Any], int]
    # The longest lifetime the gateway grants.
    max_seconds: int


@dataclass(frozen=True)
class TokenMint:
    """One provider-shaped token mint route (the account's key where that provider's SDK sends it)."""

    method: Literal["GET", "POST"]
    path: str  # route pattern; ``{name}`` parts are path parameters
    key: Callable[[Mapping[str, str]], str | None]  # the account's key from the request headers
    seconds: Callable[[MintRequest], int]  # the token's lifetime; raises ``Refusal`` on a bad request
    body: Callable[[str, int], dict[str, Any]]  # (token, seconds) → the JSON answer
    # Whether the request's body is a JSON object the mint reads (``MintRequest.body``; a body that is not one is
    # refused 400); other mints ignore their body.
    reads_body: bool = False
    # The cap on the length of the session the token opens (``None``: none asked); raises ``Refusal`` when invalid.
    session_cap: Callable[[MintRequest], int | None] = lambda request: None


@dataclass(frozen=True)
class SdkShape:
    """The drop-in routes for the provider's own SDK: the provider is implied, only the credential's place differs."""

    stream_path: str
    # (request headers, ``?token=`` value) → (api key, token); at most one of them is used.
    credential: Callable[[Mapping[str, str], str | None], tuple[str | None, str | None]]
    token_mints: tuple[TokenMint, ...] = field(default=())
    # Subprotocols the route accepts as a credential carrier (a browser cannot set headers, so it offers e.g.
    # ``token, <key>``): the first one the client offers is echoed in the 101, as browsers require.
    subprotocols: tuple[str, ...] = ()


def bearer_or_raw(value: str | None) -> str | None:
    """The credential in an ``Authorization`` value: ``Bearer <x>`` or the raw ``<x>`` (as some SDKs send)."""
    if value is None:
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        value = rest.strip()
    return value or None


def _split_base(base_url: str) -> tuple[str, str]:
    url = base_url.partition("#")[0]
    path, _, query = url.partition("?")
    return path, query.strip("&")


class Provider(ABC):
    """One provider's rules. Instances are stateless singletons; per-session state lives in the :class:`Meter`."""

    # The exact lower-case name clients use in ``?provider=``; also the stem of its settings' names.
    name: ClassVar[str]
    # The provider's WebSocket URL unless the operator sets ``STTGATE_<NAME>_URL``.
    default_url: ClassVar[str]
    # Price in USD per hour of metered audio unless the operator sets ``STTGATE_RATE_<NAME>``.
    default_rate: ClassVar[Decimal]
    # The query parameter that selects the provider's model (``None``: the provider has none).
    model_param: ClassVar[str | None] = None
    # The uncompressed formats the gateway can meter, quoted when it refuses another one (e.g. "encoding pcm_s16le").
    metered_formats: ClassVar[str] = ""
    # Query parameters the provider requires and the gateway adds when the client did not send them.
    required_defaults: ClassVar[Pairs] = ()
    # Pull mode: the query pairs declaring the audio the gateway sends (16 kHz s16le mono PCM); a start request that
    # declares another value for one of these keys is refused.
    pull_format: ClassVar[Pairs] = ()
    # Pull mode: the shortest audio frame the provider accepts; a source's short last chunk is padded with silence.
    min_pull_frame_bytes: ClassVar[int] = 0
    # True: after ``end_frames`` the provider closes the socket itself; False: the gateway closes once acknowledged.
    closes_after_end: ClassVar[bool]
    # Byte strings that, in a provider message, mean the provider refused the operator's credential in-band.
    auth_error_markers: ClassVar[tuple[bytes, ...]] = ()
    # Prefixes of the provider's own credentials (e.g. single-use tokens), redacted from logged queries.
    secret_prefixes: ClassVar[tuple[str, ...]] = ()
    # The drop-in routes for the provider's SDK (``None``: none).
    sdk: ClassVar[SdkShape | None] = None
    # The demo: query pairs added to ``pull_format`` so that the session ends with the provider's final transcript.
    demo_params: ClassVar[Pairs] = ()
    # The live-transcription page: its label and the page adapter (a JS module in this package) speaking the
    # provider's protocol; ``None``: the page does not offer this provider.
    page_label: ClassVar[str] = ""
    page_script: ClassVar[str | None] = None

    @property
    def api_key_env(self) -> str:
        """The environment variable holding the operator's key, e.g. ``<NAME>_API_KEY``."""
        return f"{self.name.upper()}_API_KEY"

    def default_settings(self) -> ProviderSettings:
        return ProviderSettings(self.default_url, SecretStr(""), self.default_rate)

    def upstream_url(self, base_url: str, forwarded: str) -> str:
        """``base_url`` plus the client's forwarded query plus the required defaults it lacks.

        A query already in ``base_url`` (an operator's choice) is kept first and counts as present for the defaults.
        """
        path, base_query = _split_base(base_url)
        present = "&".join(part for part in (base_query, forwarded) if part)
        query = with_defaults(present, self.required_defaults)
        return f"{path}?{query}" if query else path

    def operator_headers(self, settings: ProviderSettings) -> dict[str, str]:
        """The upstream handshake's headers: the operator's key where the provider expects it."""
        return self.credential_headers(settings.api_key.get_secret_value())

    def pad_pull_frame(self, chunk: bytes) -> bytes:
        """A pull chunk padded with silence up to ``min_pull_frame_bytes``.

        Only a source's last chunk can be short, and padding it within its own 100 ms slot never changes the number
        of 5-second cycles (they start on 100 ms bounds).
        """
        minimum = self.min_pull_frame_bytes
        return chunk + bytes(minimum - len(chunk)) if len(chunk) < minimum else chunk

    def is_auth_error(self, data: bytes) -> bool:
        """Whether a provider message says, in-band, that the operator's credential is bad."""
        return any(marker in data for marker in self.auth_error_markers)

    def page_info(self) -> dict[str, Any] | None:
        """What the live-transcription page needs (``None`` when the page does not offer this provider)."""
        if self.page_script is None or self.sdk is None:
            return None
        return {
            "name": self.name,
            "label": self.page_label or self.name,
            "path": self.sdk.stream_path.lstrip("/"),
            "script": f"provider-{self.name}.js",
        }

    @abstractmethod
    def credential_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the operator's provider key on the upstream handshake."""

    @abstractmethod
    def new_meter(self, forwarded: str) -> Meter:
        """A fresh meter for a session with these forwarded parameters."""

    def format_refusal(self, forwarded: str) -> FormatRefusal | None:
        """Why the gateway cannot meter the declared format exactly as the provider reads it (``None``: it can).

        The handshake answers 400 with it (docs/billing.md#strict-metering). This default only refuses a format its
        meter cannot measure (``audio_format is None``); providers with format parameters read them strictly.
        """
        if self.new_meter(forwarded).audio_format is None:
            return FormatRefusal(FormatError.UNSUPPORTED, self.metered_formats)
        return None

    @abstractmethod
    def audio_frame(self, pcm: bytes) -> str | bytes:
        """Pull mode: one chunk of 16 kHz s16le mono PCM in this provider's framing."""

    @abstractmethod
    def end_frames(self, forwarded: str = "") -> list[str]:
        """Text frames that end the provider session gracefully (then see ``closes_after_end``/``is_end_ack``)."""

    @abstractmethod
    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        """Whether this provider message, received after ``end_frames``, means nothing more will come."""

    def caption(self, message: Mapping[str, Any]) -> Caption | None:
        """A provider JSON message as a caption, or ``None`` when a captioning app would not show it (by default,
        nothing: ``sttgate demo`` then prints no transcript for this provider)."""
        return None

    def end_figures(self, text: str, forwarded: str) -> ProviderFigures | None:
        """The provider's own figures if ``text`` (its last message of a session) reports them, else ``None`` (by
        default: a provider that reports nothing at the end)."""
        return None

    def is_end_message(self, text: str) -> bool:
        """Whether this client text frame, as the client's last one, already ends the provider session (so the
        gateway does not send ``end_frames`` again and only waits for the provider's end).

        ``False`` unless a provider says otherwise: the gateway then always sends its own end message, which is
        right for any provider where a second one is harmless.
        """
        return False


def json_object(text: str) -> dict[str, Any] | None:
    """A provider message as a dict, or ``None`` when it is not a JSON object (providers may send anything)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None
