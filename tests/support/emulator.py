"""The in-process provider emulators, and per-provider gateway settings derived from the provider registry.

``EMULATOR_PATHS`` is the one place that says where each provider lives on the emulator; everything per provider
(gateway ``Settings`` overrides, ``sttgate serve`` environment, emulator keys) is built by iterating the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sttgate.emulators.app import EMULATORS, RECORDER, EmulatorConfig, create_app
from sttgate.emulators.recorder import Recorder
from sttgate.providers import PROVIDERS
from tests.support.servers import AIOHTTP_SHUTDOWN_TIMEOUT, serving

# Each provider's real WebSocket path, which the emulator serves too (from the emulators' own registry).
EMULATOR_PATHS: dict[str, str] = {name: emulator.ws_path for name, emulator in EMULATORS.items()}


def provider_names() -> list[str]:
    """The registry's providers that have an emulator (the one place the tests iterate the registry).

    A provider a test registers for itself (tests/pull/test_fake_provider.py) has none and configures its own URL;
    that every shipped provider has an emulator is a test of its own (tests/providers).
    """
    return [name for name in PROVIDERS if name in EMULATOR_PATHS]


# The operator's provider keys, as configured in both the emulator and the gateway (the emulator's default keys).
OPERATOR_KEYS: dict[str, str] = {name: f"emulator-{name}-key" for name in provider_names()}


def upstream_settings(base: str, keys: Mapping[str, str] = OPERATOR_KEYS) -> dict[str, Any]:
    """``Settings`` overrides pointing every provider at ``base`` (``ws://HOST:PORT``) with ``keys``."""
    values: dict[str, Any] = {}
    for name in provider_names():
        values[f"{name}_url"] = base + EMULATOR_PATHS[name]
        values[f"{name}_api_key"] = keys[name]
    return values


def upstream_env(base: str, keys: Mapping[str, str] = OPERATOR_KEYS) -> dict[str, str]:
    """The same as environment variables for ``sttgate serve`` (``STTGATE_<NAME>_URL``, ``<NAME>_API_KEY``)."""
    env: dict[str, str] = {}
    for name in provider_names():
        env[f"STTGATE_{name.upper()}_URL"] = base + EMULATOR_PATHS[name]
        env[f"{name.upper()}_API_KEY"] = keys[name]
    return env


def emulator_config(keys: Mapping[str, str] = OPERATOR_KEYS, **overrides: Any) -> EmulatorConfig:
    """An emulator accepting ``keys`` (one per provider), with ``EmulatorConfig`` fields overridden; an override named
    after a provider is that emulator's options (e.g. ``assemblyai=AssemblyAIOptions(rate_tolerance=1.0)``)."""
    providers: dict[str, Any] = {}
    for name in provider_names():
        options = overrides.pop(name, None) or EMULATORS[name].options()
        providers[name] = dataclasses.replace(options, api_keys=(keys[name],))
    return EmulatorConfig(**overrides, providers=providers)


@dataclass
class EmulatorServer:
    """A running emulator app: ``base`` is ``ws://127.0.0.1:PORT``; ``recorder`` holds what it received."""

    app: web.Application
    port: int

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def recorder(self) -> Recorder:
        return self.app[RECORDER]

    def url(self, provider: str) -> str:
        """Where ``provider``'s WebSocket is on this emulator."""
        return self.base + EMULATOR_PATHS[provider]


@asynccontextmanager
async def running_emulator(
    config: EmulatorConfig | None = None, *, shutdown_timeout: float = AIOHTTP_SHUTDOWN_TIMEOUT
) -> AsyncIterator[EmulatorServer]:
    """Every provider emulator on one ephemeral loopback port (accepting ``OPERATOR_KEYS`` unless configured)."""
    app = create_app(config if config is not None else emulator_config())
    async with serving(app, shutdown_timeout=shutdown_timeout) as port:
        yield EmulatorServer(app, port)
