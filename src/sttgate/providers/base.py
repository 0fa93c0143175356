"""What the gateway needs to know about one provider: URL, credential, meter, framing and how a session ends.

The shell is provider-agnostic: it asks the :class:`Provider` for everything that differs between ElevenLabs and
AssemblyAI, so adding a provider is one module and one entry in ``sttgate.providers.PROVIDERS``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

from sttgate.config import Settings
from sttgate.core.metering import Meter
from sttgate.core.params import with_defaults

# Pull mode (SPEC §6) feeds FFmpeg output: PCM s16le, 16 kHz, mono.
PULL_SAMPLE_RATE = 16000


def _split_base(base_url: str) -> tuple[str, str]:
    url = base_url.partition("#")[0]
    path, _, query = url.partition("?")
    return path, query.strip("&")


class Provider(ABC):
    """One provider's rules. Instances are stateless singletons; per-session state lives in the :class:`Meter`."""

    name: ClassVar[str]
    # Query parameters the provider requires and the gateway adds when the client did not send them.
    required_defaults: ClassVar[Sequence[tuple[str, str]]]
    # True: after ``end_frames`` the provider closes the socket itself; False: the gateway closes once acknowledged.
    closes_after_end: ClassVar[bool]

    def upstream_url(self, base_url: str, forwarded: str) -> str:
        """``base_url`` plus the client's forwarded query plus the required defaults it lacks.

        A query already in ``base_url`` (an operator's choice) is kept first and counts as present for the defaults.
        """
        path, base_query = _split_base(base_url)
        present = "&".join(part for part in (base_query, forwarded) if part)
        query = with_defaults(present, self.required_defaults)
        return f"{path}?{query}" if query else path

    @abstractmethod
    def credential_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the operator's provider key on the upstream handshake."""

    @abstractmethod
    def new_meter(self, forwarded: str) -> Meter:
        """A fresh meter for a session with these forwarded parameters."""

    @abstractmethod
    def audio_frame(self, pcm: bytes) -> str | bytes:
        """Pull mode: one chunk of 16 kHz s16le mono PCM in this provider's framing."""

    @abstractmethod
    def end_frames(self, forwarded: str = "") -> list[str]:
        """Text frames that end the provider session gracefully (then see ``closes_after_end``/``is_end_ack``)."""

    @abstractmethod
    def is_end_ack(self, text: str, forwarded: str = "") -> bool:
        """Whether this provider message, received after ``end_frames``, means nothing more will come."""

    @abstractmethod
    def base_url(self, settings: Settings) -> str:
        """The provider's WebSocket URL from the settings."""

    @abstractmethod
    def operator_key(self, settings: Settings) -> str:
        """The operator's provider API key from the settings."""

    @abstractmethod
    def rate(self, settings: Settings) -> Decimal:
        """The configured price in USD per hour of metered audio."""


def json_object(text: str) -> dict[str, Any] | None:
    """A provider message as a dict, or ``None`` when it is not a JSON object (providers may send anything)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None
