"""The provider registry: one line per provider, by the exact lower-case name clients use in ``?provider=``.

Everything keyed by provider elsewhere (settings, refusal messages, usage totals, SDK routes, pull framing, the demo
and its page) is derived from this registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sttgate.providers.assemblyai import ASSEMBLYAI
from sttgate.providers.base import Provider, ProviderSettings
from sttgate.providers.deepgram import DEEPGRAM
from sttgate.providers.elevenlabs import ELEVENLABS

PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    """Add ``provider`` to the registry (its name must be new)."""
    if provider.name in PROVIDERS:
        raise ValueError(f"provider {provider.name!r} is already registered")
    PROVIDERS[provider.name] = provider
    return provider


register(ELEVENLABS)
register(ASSEMBLYAI)
register(DEEPGRAM)

__all__ = [
    "PROVIDERS",
    "Provider",
    "ProviderSettings",
    "get_provider",
    "names",
    "register",
    "registered",
    "secret_prefixes",
]


def get_provider(name: str) -> Provider | None:
    """The provider called exactly ``name`` (case-sensitive, as docs/contract.md requires), else ``None``."""
    return PROVIDERS.get(name)


def names() -> tuple[str, ...]:
    """The registered provider names, in registration order (valid-provider lists, usage totals)."""
    return tuple(PROVIDERS)


def secret_prefixes() -> tuple[str, ...]:
    """Every registered provider's credential prefixes, for redacting logged queries."""
    return tuple(prefix for provider in PROVIDERS.values() for prefix in provider.secret_prefixes)


@contextmanager
def registered(provider: Provider) -> Iterator[Provider]:
    """Register ``provider`` for the duration of the block (tests: a throw-away provider), then remove it.

    Build settings and apps inside the block: they read the registry when they are created.
    """
    register(provider)
    try:
        yield provider
    finally:
        del PROVIDERS[provider.name]
