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
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sttgate.core.prices import PriceBook, PriceBookError, ProviderPrices, parse_tables
from sttgate.providers import PROVIDERS, ProviderSettings

# The price book shipped with the gateway (docs/billing.md#the-default-book).
DEFAULT_PRICE_BOOK = Path(__file__).parent / "data" / "prices.toml"
# Bounds of the settings: wide enough for any real deployment, narrow enough to catch a typo (a port of 70000, a
# timeout in milliseconds, a negative count) at start-up with a one-line error instead of odd behaviour later.
_HOUR = 3600.0
_DAY = 86400.0
_MAX_FRAME = 1024 * 1024 * 1024
_MAX_COUNT = 1_000_000
_MAX_WORKERS = 1024
# USD per hour of audio: a rate above this is a typo (a price per minute or in cents).
MAX_RATE_USD_PER_HOUR = Decimal(1000)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class DataPlane(StrEnum):
    """How push sessions move frames (docs/configuration.md#data-plane)."""

    # Frame bytes forwarded unchanged between the two sockets, only headers read (the production data plane).
    PASSTHROUGH = "passthrough"
    # aiohttp reads, unmasks and re-frames every frame: kept only to compare the two in benchmarks.
    AIOHTTP = "aiohttp"


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
            rate = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{key} must be a decimal number, not {value!r}") from None
        if not rate.is_finite() or not 0 <= rate <= MAX_RATE_USD_PER_HOUR:
            raise ValueError(f"{key} must be between 0 and {MAX_RATE_USD_PER_HOUR} USD per hour, not {value!r}")
        return rate
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


class Settings(BaseSettings):
    # extra="allow" only for the registered providers' keys; _provider_settings drops every other unknown key.
    model_config = SettingsConfigDict(env_prefix="STTGATE_", env_file=".env", extra="allow", populate_by_name=True)

    database_url: str = "sqlite:///./sttgate.db"
    host: str = Field("127.0.0.1", min_length=1)
    # 0 means any free port (tests, and ``serve --port 0`` reports the one it got).
    port: int = Field(8080, ge=0, le=65535)

    drain_seconds: float = Field(30.0, ge=0, le=_DAY)
    # No metered client audio for this long closes a session (1008 "idle timeout"); control messages do not count.
    idle_timeout_seconds: float = Field(120.0, gt=0, le=_DAY)
    # A push session open this long is closed (1008 "session time limit"); a token's max_session_seconds may lower it.
    max_session_seconds: float = Field(10800.0, gt=0, le=_DAY)
    upstream_connect_timeout_seconds: float = Field(10.0, gt=0, le=_HOUR)
    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1, le=_MAX_FRAME)
    # How long to wait for the peer's close reply, and for a provider to end gracefully after its end message
    # (Terminate / final commit / CloseStream) on every path that closes the provider hop
    # (docs/contract.md#graceful-provider-end).
    close_timeout_seconds: float = Field(5.0, gt=0, le=_HOUR)
    finish_timeout_seconds: float = Field(2.0, gt=0, le=_HOUR)
    # Admission control: above this many live sessions a process refuses handshakes with 503 (0 = no limit).
    max_sessions_per_process: int = Field(0, ge=0, le=_MAX_COUNT)
    # Per-hop WebSocket ping interval; None disables pings.
    heartbeat_seconds: float | None = Field(20.0, gt=0, le=_HOUR)
    # How push sessions move frames; "aiohttp" only to compare in benchmarks (docs/configuration.md#data-plane).
    data_plane: DataPlane = DataPlane.PASSTHROUGH
    # Extra CA certificates (PEM) trusted for wss:// provider URLs, on top of the system's (a private provider, tests).
    upstream_ca_file: Path | None = None
    # Postpaid usage and session totals are written at least this often.
    ledger_flush_seconds: float = Field(0.5, gt=0, le=_HOUR)
    # Live sessions re-read their accounts this often: a switch to prepaid or a withdrawn streaming permission binds
    # them from their next cycle on (docs/billing.md#account-changes).
    account_refresh_seconds: float = Field(1.0, gt=0, le=_HOUR)
    # A gateway renews its stream slots this often; a slot not renewed for lease_ttl is free.
    lease_renew_seconds: float = Field(10.0, gt=0, le=_HOUR)
    lease_ttl_seconds: float = Field(30.0, gt=0, le=_DAY)
    # Database outage (docs/operations.md#database-outage): a handshake's database work and each write of a session's
    # end wait at most this long (503 database_unavailable / kept and retried); /readyz answers 503 while a write
    # failed within the last database_failure_window_seconds; at most pending_ends_max ended sessions are kept
    # waiting for their end to be written; at shutdown they are retried for shutdown_write_seconds, then logged.
    database_timeout_seconds: float = Field(default=3.0, gt=0, le=_HOUR)
    database_failure_window_seconds: float = Field(default=15.0, gt=0, le=_DAY)
    pending_ends_max: int = Field(default=10000, ge=1, le=_MAX_COUNT)
    shutdown_write_seconds: float = Field(default=10.0, ge=0, le=_HOUR)
    gateway_id: str = ""
    # Benchmarking only: relay without metering or billing (nothing metered, charged or counted); never in production.
    metering_enabled: bool = True

    pull_allow_private: bool = False
    ffmpeg: str = ""
    pull_source_timeout_seconds: float = Field(15.0, gt=0, le=_HOUR)
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=_HOUR)
    webhook_max_attempts: int = Field(8, ge=1, le=100)
    webhook_backoff_seconds: float = Field(0.5, ge=0, le=_HOUR)
    webhook_backoff_max_seconds: float = Field(30.0, ge=0, le=_DAY)
    webhook_queue_max: int = Field(1000, ge=1, le=_MAX_COUNT)

    # The price book (docs/billing.md#the-price-book): a TOML file of [prices.<provider>] tables (STTGATE_PRICE_BOOK),
    # and the [prices.*] tables of the --config file; each provider's table replaces the shipped one.
    price_book: str = ""
    prices: dict[str, Any] = {}

    token_max_seconds: int = Field(600, ge=1, le=600)
    demo_page: bool = True
    demo_api_key: SecretStr = SecretStr("")

    workers: int = Field(1, ge=1, le=_MAX_WORKERS)
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

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.lease_ttl_seconds <= self.lease_renew_seconds:
            raise ValueError("lease_ttl_seconds must be longer than lease_renew_seconds (a live slot would expire)")
        if self.webhook_backoff_max_seconds < self.webhook_backoff_seconds:
            raise ValueError("webhook_backoff_max_seconds must not be below webhook_backoff_seconds")
        return self

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

    def prices_in_force(self) -> PriceBook:
        """The effective price book: the shipped one, whose provider tables are replaced by the ``--config`` file's,
        then by ``STTGATE_PRICE_BOOK``'s; then ``STTGATE_RATE_<PROVIDER>`` (when set) prices that provider's default
        model. Raises :class:`PriceBookError` (one line) for a book that cannot be used."""
        known = tuple(PROVIDERS)
        book = PriceBook(_read_book(DEFAULT_PRICE_BOOK, known))
        book = book.merged(parse_tables(self.prices, known, "[prices] of the config file"))
        if self.price_book:
            book = book.merged(_read_book(Path(self.price_book), known))
        extra = self.__pydantic_extra__ or {}
        tables = dict(book.providers)
        for name in known:
            setting = f"STTGATE_RATE_{name.upper()}"
            table = tables.get(name)
            if table is None:  # a provider the book does not price: its rate for every model
                tables[name] = ProviderPrices(rate=self.provider(name).rate, sources={"rate": f"{setting} or default"})
                continue
            if not table.models and table.rate is None:
                table = table.with_default_rate(self.provider(name).rate, f"{setting} or default")
            rate = extra.get(_provider_keys(name)[2])
            tables[name] = table if rate is None else table.with_default_rate(rate, setting)
        return PriceBook(tables)

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


def _read_book(path: Path, known: tuple[str, ...]) -> dict[str, ProviderPrices]:
    """The ``[prices.*]`` tables of a TOML file; a file without any is an error (surely not the intended one)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise PriceBookError(f"price book {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceBookError(f"price book {path}: not TOML: {exc}") from None
    if "prices" not in data:
        raise PriceBookError(f"price book {path}: no [prices.<provider>] tables")
    return parse_tables(data["prices"], known, f"price book {path}")


def describe_invalid(error: ValidationError) -> str:
    """A settings validation error as one line for an operator: each bad setting with its environment name, what is
    wrong and the value given (secrets and the database URL are not echoed)."""
    parts: list[str] = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if not field:
            parts.append(message)
            continue
        secret = field == "database_url" or field.endswith(("_key", "secret"))
        given = "" if secret else f" (got {repr(item.get('input'))[:60]})"
        parts.append(f"{field} (STTGATE_{field.upper()}): {message}{given}")
    return "; ".join(parts)


def _mask_url_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
