"""Gateway configuration: environment variables (``STTGATE_*``), a ``.env`` file, or a TOML file.

Every limit and timeout of the gateway lives here, so that operators can see them all with
``sttgate config``.

Per-provider settings are derived from the provider registry (:mod:`sttgate.providers`): for a provider ``name``,
``STTGATE_<NAME>_URL`` (``<name>_url``), ``<NAME>_API_KEY`` (``<name>_api_key``) and ``STTGATE_RATE_<NAME>``
(``rate_<name>``), defaulting to the provider's own URL, no key, and its default rate. Read them with
:meth:`Settings.provider`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sttgate.providers import PROVIDERS, ProviderSettings


def _provider_keys(name: str) -> tuple[str, str, str]:
    """The settings keys of one provider: URL, operator key, rate."""
    return f"{name}_url", f"{name}_api_key", f"rate_{name}"


def _provider_env_names(name: str) -> dict[str, str]:
    """Environment variable (lower case) → settings key, for one provider: today's names, derived from its name."""
    url, api_key, rate = _provider_keys(name)
    return {f"sttgate_{name}_url": url, PROVIDERS[name].api_key_env.lower(): api_key, f"sttgate_rate_{name}": rate}


class _ProviderEnvSource(PydanticBaseSettingsSource):
    """Every registered provider's settings from the environment, else from the ``.env`` file."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # values come from __call__: these keys are not declared fields

    def __call__(self) -> dict[str, Any]:
        environ = {key.lower(): value for key, value in os.environ.items()}
        dotenv: Mapping[str, str | None] = getattr(self._dotenv, "env_vars", {})
        out: dict[str, Any] = {}
        for name in PROVIDERS:
            for env, key in _provider_env_names(name).items():
                value = environ.get(env, dotenv.get(env))
                if value is not None:
                    out[key] = value
        return out


def _provider_value(key: str, value: Any) -> Any:
    """Coerce one provider setting (``key`` tells which kind)."""
    if key.endswith("_api_key"):
        return value if isinstance(value, SecretStr) else SecretStr(str(value))
    if key.startswith("rate_"):
        try:
            return value if isinstance(value, Decimal) else Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{key} must be a decimal number, not {value!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


class Settings(BaseSettings):
    # extra="allow" only for the registered providers' keys; _provider_settings drops every other unknown key.
    model_config = SettingsConfigDict(env_prefix="STTGATE_", env_file=".env", extra="allow", populate_by_name=True)

    database_url: str = "sqlite:///./sttgate.db"
    host: str = "127.0.0.1"
    port: int = 8080

    drain_seconds: float = 30.0
    # No metered client audio for this long closes a session (1008 "idle timeout"); control messages do not count.
    idle_timeout_seconds: float = 120.0
    # A push session open this long is closed (1008 "session time limit"); a token's max_session_seconds may lower it.
    max_session_seconds: float = Field(default=10800.0, gt=0)
    upstream_connect_timeout_seconds: float = 10.0
    max_frame_bytes: int = 4 * 1024 * 1024
    # How long to wait for the peer's close reply, and for a provider to end gracefully after its end message
    # (Terminate / final commit) on every path that closes the provider hop (docs/contract.md#graceful-provider-end).
    close_timeout_seconds: float = 5.0
    finish_timeout_seconds: float = 2.0
    # Admission control: above this many live sessions a process refuses handshakes with 503 (0 = no limit).
    max_sessions_per_process: int = 0
    # Per-hop WebSocket ping interval; None disables pings.
    heartbeat_seconds: float | None = 20.0
    # Postpaid usage and session totals are written at least this often.
    ledger_flush_seconds: float = 0.5
    # Live sessions re-read their accounts this often: a switch to prepaid or a withdrawn streaming permission binds
    # them from their next cycle on (docs/billing.md#account-changes).
    account_refresh_seconds: float = 1.0
    # A gateway renews its stream slots this often; a slot not renewed for lease_ttl is free.
    lease_renew_seconds: float = 10.0
    lease_ttl_seconds: float = 30.0
    # Database outage (docs/operations.md#database-outage): a handshake's database work and each write of a session's
    # end wait at most this long (503 database_unavailable / kept and retried); /readyz answers 503 while a write
    # failed within the last database_failure_window_seconds; at most pending_ends_max ended sessions are kept
    # waiting for their end to be written; at shutdown they are retried for shutdown_write_seconds, then logged.
    database_timeout_seconds: float = Field(default=3.0, gt=0)
    database_failure_window_seconds: float = Field(default=15.0, gt=0)
    pending_ends_max: int = Field(default=10000, ge=1)
    shutdown_write_seconds: float = Field(default=10.0, ge=0)
    gateway_id: str = ""
    # Benchmarking only: relay without metering or billing (nothing metered, charged or counted); never in production.
    metering_enabled: bool = True

    pull_allow_private: bool = False
    ffmpeg: str = ""
    pull_source_timeout_seconds: float = 15.0
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 0.5
    webhook_backoff_max_seconds: float = 30.0
    webhook_queue_max: int = 1000

    token_max_seconds: int = 600
    demo_page: bool = True
    demo_api_key: SecretStr = SecretStr("")

    workers: int = 1
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        provider_env = _ProviderEnvSource(settings_cls, dotenv_settings)
        return init_settings, provider_env, env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _provider_settings(cls, data: Any) -> Any:
        """Keep the registered providers' keys (coerced) as extra values and drop any other unknown key.

        Only the keys given are kept, so that ``model_dump(exclude_unset=True)`` (used by :meth:`load`) never turns
        a default into an override; :meth:`provider` fills in the provider's defaults.
        """
        if not isinstance(data, dict):
            return data
        known: dict[str, str] = {}
        for name in PROVIDERS:
            for key in _provider_keys(name):
                known[key] = key
            known[PROVIDERS[name].api_key_env.lower()] = _provider_keys(name)[1]
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in cls.model_fields:
                out[key] = value
            elif key.lower() in known:
                out[known[key.lower()]] = _provider_value(known[key.lower()], value)
        return out

    def provider(self, name: str) -> ProviderSettings:
        """The settings of the registered provider ``name`` (``KeyError`` when it is not registered)."""
        defaults = PROVIDERS[name].default_settings()
        extra = self.__pydantic_extra__ or {}
        url, api_key, rate = _provider_keys(name)
        return ProviderSettings(
            url=extra.get(url, defaults.url),
            api_key=extra.get(api_key, defaults.api_key),
            rate=extra.get(rate, defaults.rate),
        )

    def __getattr__(self, item: str) -> Any:
        """``settings.<name>_url``, ``settings.<name>_api_key`` and ``settings.rate_<name>`` of registered providers,
        for callers that name the setting (``sttgate config``, tests); code keyed by provider uses :meth:`provider`."""
        for name in PROVIDERS:
            url, api_key, rate = _provider_keys(name)
            if item in (url, api_key, rate):
                values = self.provider(name)
                return {url: values.url, api_key: values.api_key, rate: values.rate}[item]
        return super().__getattr__(item)  # type: ignore[misc]

    def provider_items(self) -> dict[str, Any]:
        """Every registered provider's settings by key: all URLs, then all keys, then all rates."""
        keys = [_provider_keys(name) for name in PROVIDERS]
        return {key: getattr(self, key) for kind in range(3) for key in (k[kind] for k in keys)}

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Environment first, then a TOML file adds what the environment does not set."""
        file_values: dict[str, Any] = {}
        if config_file:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
            file_values = {k.lower().removeprefix("sttgate_"): v for k, v in data.items()}
        env_set = cls()
        merged = {**file_values, **env_set.model_dump(exclude_unset=True), **overrides}
        return cls(**merged) if merged else env_set

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets masked, for ``sttgate config``."""
        out: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            values[name] = getattr(self, name)
            if name == "port":  # the providers' settings come right after the listening address
                values.update(self.provider_items())
        for name, value in values.items():
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = "****" + secret[-4:] if len(secret) > 8 else ("****" if secret else "")
            elif name == "database_url":
                value = _mask_url_password(str(value))
            elif isinstance(value, Decimal):
                value = str(value)
            out[name] = value
        return out


def _mask_url_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
