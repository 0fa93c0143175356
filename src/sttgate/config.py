"""Gateway configuration: environment variables (``STTGATE_*``), a ``.env`` file, or a TOML file.

Every limit and timeout of the gateway lives here, so that operators can see them all with
``sttgate config``.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STTGATE_", env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = "sqlite:///./sttgate.db"
    host: str = "127.0.0.1"
    port: int = 8080

    elevenlabs_url: str = "wss://api.elevenlabs.io/v1/speech-to-text/realtime"
    assemblyai_url: str = "wss://streaming.assemblyai.com/v3/ws"
    elevenlabs_api_key: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("ELEVENLABS_API_KEY", "elevenlabs_api_key")
    )
    assemblyai_api_key: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("ASSEMBLYAI_API_KEY", "assemblyai_api_key")
    )

    rate_elevenlabs: Decimal = Decimal("0.39")
    rate_assemblyai: Decimal = Decimal("0.15")

    drain_seconds: float = 30.0
    idle_timeout_seconds: float = 120.0
    upstream_connect_timeout_seconds: float = 10.0
    max_frame_bytes: int = 4 * 1024 * 1024
    # How long to wait for the peer's close reply, and for a provider to end gracefully (Terminate / final commit).
    close_timeout_seconds: float = 5.0
    finish_timeout_seconds: float = 2.0
    # Admission control: above this many live sessions a process refuses handshakes with 503 (0 = no limit).
    max_sessions_per_process: int = 0
    # Per-hop WebSocket ping interval; None disables pings.
    heartbeat_seconds: float | None = 20.0
    # Postpaid usage and session totals are written at least this often.
    ledger_flush_seconds: float = 0.5
    # A gateway renews its stream slots this often; a slot not renewed for lease_ttl is free.
    lease_renew_seconds: float = 10.0
    lease_ttl_seconds: float = 30.0
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
        for name, value in self.model_dump().items():
            if isinstance(getattr(self, name), SecretStr):
                secret = getattr(self, name).get_secret_value()
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
