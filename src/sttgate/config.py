"""Gateway configuration: environment variables (``STTGATE_*``), a ``.env`` file, or a TOML file.

Every limit and timeout of the gateway lives here, so that operators can see them all with
``sttgate config``.

Per-provider settings are derived from the provider registry (:mod:`sttgate.providers`): for a provider ``name``,
``STTGATE_<NAME>_URL`` (``<name>_url``), ``<NAME>_API_KEY`` (``<name>_api_key``) and ``STTGATE_RATE_<NAME>``
(``rate_<name>``), defaulting to the provider's own URL, no key, and its default rate. Read them with
:meth:`Settings.provider`.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sttgate.core.prices import PriceBook, PriceBookError, ProviderPrices, parse_tables
from sttgate.core.usage_events import SinkType, StripeValue
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
DEFAULT_MAX_SESSIONS_PER_PROCESS = 1000
"""Admission control's default (``STTGATE_MAX_SESSIONS_PER_PROCESS``; docs/configuration.md#admission-control).

A process over its capacity queues frames into seconds of latency instead of shedding load, so it refuses the session
past this many with 503 ``gateway_overloaded``. 1,000 is the largest step of the 2026-11-29 full benchmark run
(docs/benchmarks.md) at which one process under the standard load kept its p99 added latency under 100 ms (50 ms;
199 ms at 1,500, saturated at 2,000), and at which the overload rows of its targets table were met. Revise it with each
full run.
"""


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


class ExportSink(BaseModel):
    """One ``[[export]]`` table of the ``--config`` file: where usage events go (docs/export.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    type: SinkType
    # cloudevents: the collector's URL (required); api_key, when set, is sent as ``Authorization: Bearer``.
    url: str = ""
    # stripe: the API's base URL (Stripe's own by default; a local recorder in tests) and the secret key (required).
    api_base: str = "https://api.stripe.com"
    api_key: SecretStr = SecretStr("")
    # cloudevents: the ``source`` of every event (the deployment).
    source: str = Field("sttgate", min_length=1)
    # stripe: the meter's event name, and what ``payload[value]`` counts (seconds, or the price in nano-dollars).
    event_name: str = Field("sttgate_usage", min_length=1, max_length=100)
    value: StripeValue = StripeValue.SECONDS
    # Events per request (cloudevents) or per round of calls (stripe).
    batch_size: int = Field(100, ge=1, le=1000)
    timeout_seconds: float = Field(10.0, gt=0, le=_HOUR)
    # After a failure: wait between half and all of backoff × 2^(failures-1), at most backoff_max (jitter).
    backoff_seconds: float = Field(1.0, gt=0, le=_HOUR)
    backoff_max_seconds: float = Field(60.0, gt=0, le=_DAY)

    @field_validator("url", "api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ExportSink:
        if self.type is SinkType.CLOUDEVENTS and not self.url:
            raise ValueError(f"export sink {self.name!r}: a cloudevents sink needs url")
        if self.type is SinkType.STRIPE and not self.api_key.get_secret_value():
            raise ValueError(f"export sink {self.name!r}: a stripe sink needs api_key")
        if self.type is SinkType.STRIPE and importlib.util.find_spec("stripe") is None:
            raise ValueError(f"export sink {self.name!r} needs the stripe library: pip install 'sttgate[stripe]'")
        if self.backoff_max_seconds < self.backoff_seconds:
            raise ValueError(f"export sink {self.name!r}: backoff_max_seconds must not be below backoff_seconds")
        return self

    def masked(self) -> dict[str, Any]:
        """This sink for ``sttgate config``: the API key masked, only the fields its type uses."""
        out = self.model_dump(mode="json")
        secret = self.api_key.get_secret_value()
        out["api_key"] = _mask_secret(secret)
        unused = ("api_base", "event_name", "value") if self.type is SinkType.CLOUDEVENTS else ("url", "source")
        return {k: v for k, v in out.items() if k not in unused}


class Settings(BaseSettings):
    # extra="allow" only for the registered providers' keys; _provider_settings drops every other unknown key.
    model_config = SettingsConfigDict(env_prefix="STTGATE_", env_file=".env", extra="allow", populate_by_name=True)

    database_url: str = "sqlite:///./sttgate.db"
    host: str = Field("127.0.0.1", min_length=1)
    # 0 means any free port (tests, and ``serve --port 0`` reports the one it got).
    port: int = Field(8080, ge=0, le=65535)
    # The admin listener (docs/operations.md#the-admin-listener): /metrics, the admin API and console; port 0 turns
    # it off. /metrics is on the public listener too only with public_metrics.
    admin_host: str = Field("127.0.0.1", min_length=1)
    admin_port: int = Field(8081, ge=0, le=65535)
    public_metrics: bool = False

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
    # Connections (docs/operations.md#connections): a connection that has not sent a complete request head this long
    # after opening (or after its previous answer) is closed; at most max_connections are open (0 = as many as the
    # file-descriptor limit allows, and never more); the request line and each header at most max_header_field_bytes,
    # at most max_headers headers.
    request_head_timeout_seconds: float = Field(10.0, gt=0, le=_HOUR)
    max_connections: int = Field(0, ge=0, le=_MAX_COUNT)
    max_header_field_bytes: int = Field(8190, ge=1024, le=65536)
    max_headers: int = Field(40, ge=8, le=128)
    # Admission control: at this many live or opening sessions (push and pull alike) a process refuses new ones with
    # 503 gateway_overloaded (0 = no limit).
    max_sessions_per_process: int = Field(DEFAULT_MAX_SESSIONS_PER_PROCESS, ge=0, le=_MAX_COUNT)
    # Per-hop WebSocket ping interval; None disables pings.
    heartbeat_seconds: float | None = Field(20.0, gt=0, le=_HOUR)
    # How push sessions move frames; "aiohttp" only to compare in benchmarks (docs/configuration.md#data-plane).
    data_plane: DataPlane = DataPlane.PASSTHROUGH
    # Extra CA certificates (PEM) trusted for wss:// provider URLs, on top of the system's (a private provider, tests).
    upstream_ca_file: Path | None = None
    # Postpaid usage and session totals are written at least this often.
    ledger_flush_seconds: float = Field(0.5, gt=0, le=_HOUR)
    # A live session's audio seconds alone (no new cycle) are written this often: one cycle's length by default
    # (docs/admin-api.md#sessions): every flush rewriting every live session's row cost more than all else it wrote.
    ledger_progress_seconds: float = Field(5.0, gt=0, le=_HOUR)
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
    # This gateway's name in the store (default hostname:port); each start adds "/worker#<random>" to it, so that it
    # fits the column (128) with room to spare.
    gateway_id: str = Field("", max_length=96)
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
    # Account events (docs/contract.md#account-events): each gateway looks for events to post this often (they are
    # signed and retried like pull webhooks, with the webhook_* timeout and backoff).
    account_events_poll_seconds: float = Field(1.0, gt=0, le=_HOUR)

    # The price book (docs/billing.md#the-price-book): a TOML file of [prices.<provider>] tables (STTGATE_PRICE_BOOK),
    # and the [prices.*] tables of the --config file; each provider's table replaces the shipped one.
    price_book: str = ""
    prices: dict[str, Any] = {}

    token_max_seconds: int = Field(600, ge=1, le=600)
    # The demo page (docs/contract.md#demo-page) is off unless turned on. Its token mint spends the demo key's account,
    # which must be prepaid (its balance caps the spending); each client address may mint demo_token_burst tokens at
    # once and demo_tokens_per_minute after that; each session a demo token opens lasts at most
    # demo_max_session_seconds. Behind a reverse proxy, demo_client_address_header names the header in which the
    # proxy puts the client's address (its last value is used); empty: the TCP peer's address.
    demo_page: bool = False
    demo_api_key: SecretStr = SecretStr("")
    demo_tokens_per_minute: float = Field(6.0, gt=0, le=_MAX_COUNT)
    demo_token_burst: int = Field(3, ge=1, le=_MAX_COUNT)
    demo_max_session_seconds: int = Field(300, ge=1, le=int(_DAY))
    demo_client_address_header: str = ""

    # Usage export (docs/export.md): the [[export]] tables of the --config file; every gateway on a database should
    # list the same sinks. Exporters look for new events this often, and hold a sink's lease this long per renewal.
    export: list[ExportSink] = []
    export_poll_seconds: float = Field(1.0, gt=0, le=_HOUR)
    export_lease_seconds: float = Field(30.0, gt=0, le=_DAY)

    workers: int = Field(1, ge=1, le=_MAX_WORKERS)
    log_level: str = "INFO"
    # text: one "time level logger message" line per record; json: one JSON object per line (docs/operations.md#logs).
    log_format: Literal["text", "json"] = "text"

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
        if self.admin_port and self.admin_port == self.port:
            raise ValueError("admin_port must differ from port (or be 0: no admin listener)")
        if self.webhook_backoff_max_seconds < self.webhook_backoff_seconds:
            raise ValueError("webhook_backoff_max_seconds must not be below webhook_backoff_seconds")
        names = [sink.name for sink in self.export]
        if len(set(names)) != len(names):
            raise ValueError(f"[[export]] sink names must be unique, got {', '.join(names)}")
        for sink in self.export:
            if sink.timeout_seconds >= self.export_lease_seconds:
                raise ValueError(f"export sink {sink.name!r}: timeout_seconds must be below export_lease_seconds")
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
            if name == "public_metrics":  # the providers' settings come right after the listening addresses
                values.update(self.provider_items())
        for name, value in values.items():
            if isinstance(value, SecretStr):
                value = _mask_secret(value.get_secret_value())
            elif name == "export":
                value = [sink.masked() for sink in self.export]
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
        loc = item["loc"]
        if loc[0] == "export" and len(loc) > 1 and isinstance(loc[1], int):  # never echoed: it may hold a key
            key = ".".join(str(part) for part in loc[2:])
            parts.append(f"[[export]] table {loc[1] + 1}{' ' + key if key else ''}: {message}")
            continue
        secret = field == "database_url" or field.endswith(("_key", "secret"))
        given = "" if secret else f" (got {repr(item.get('input'))[:60]})"
        parts.append(f"{field} (STTGATE_{field.upper()}): {message}{given}")
    return "; ".join(parts)


def _mask_secret(secret: str) -> str:
    return "****" + secret[-4:] if len(secret) > 8 else ("****" if secret else "")


def _mask_url_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
