"""The supported providers, by the exact lower-case name clients use in ``?provider=``."""

from __future__ import annotations

from sttgate.providers.assemblyai import ASSEMBLYAI
from sttgate.providers.base import Provider
from sttgate.providers.elevenlabs import ELEVENLABS

PROVIDERS: dict[str, Provider] = {ELEVENLABS.name: ELEVENLABS, ASSEMBLYAI.name: ASSEMBLYAI}

__all__ = ["PROVIDERS", "Provider", "get_provider"]


def get_provider(name: str) -> Provider | None:
    """The provider called exactly ``name`` (case-sensitive, as SPEC §3 requires), else ``None``."""
    return PROVIDERS.get(name)
