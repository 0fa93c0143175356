"""Fault-injection knobs: query parameters prefixed ``emu_`` (documented in :mod:`.app`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class FaultError(ValueError):
    """An ``emu_*`` parameter the emulator cannot understand (answered with HTTP 400 before the upgrade)."""


@dataclass(slots=True)
class Faults:
    echo: bool = False
    handshake_delay_ms: float = 0.0
    handshake_status: int | None = None
    start_delay_ms: float | None = None
    close_after_frames: int | None = None
    close_after_seconds: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    drop_after_frames: int | None = None
    drop_after_seconds: float | None = None
    error: str | None = None
    error_message: str | None = None
    error_after_frames: int | None = None
    error_after_seconds: float | None = None
    error_close: bool | None = None
    rate_check: bool | None = None
    legacy_codes: bool | None = None
    idle_timeout_seconds: float | None = None
    max_session_seconds: float | None = None
    auto_commit_seconds: float | None = None
    commit_throttled_close: bool | None = None


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise FaultError(f"{name} must be a boolean (1/0, true/false, on/off), got {value!r}")


def _int(name: str, value: str, lo: int | None = None, hi: int | None = None) -> int:
    try:
        n = int(value)
    except ValueError:
        raise FaultError(f"{name} must be an integer, got {value!r}") from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise FaultError(f"{name} must be between {lo} and {hi}, got {n}")
    return n


def _float(name: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise FaultError(f"{name} must be a number, got {value!r}") from None
    if not x >= 0 or x == float("inf"):
        raise FaultError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


_PARSERS: dict[str, Any] = {
    "echo": _bool,
    "handshake_delay_ms": _float,
    "handshake_status": lambda n, v: _int(n, v, 200, 599),
    "start_delay_ms": _float,
    "close_after_frames": lambda n, v: _int(n, v, 0),
    "close_after_seconds": _float,
    "close_code": lambda n, v: _int(n, v, 1000, 4999),
    "close_reason": lambda n, v: v,
    "drop_after_frames": lambda n, v: _int(n, v, 0),
    "drop_after_seconds": _float,
    "error": lambda n, v: v,
    "error_message": lambda n, v: v,
    "error_after_frames": lambda n, v: _int(n, v, 0),
    "error_after_seconds": _float,
    "error_close": _bool,
    "rate_check": _bool,
    "legacy_codes": _bool,
    "idle_timeout_seconds": _float,
    "max_session_seconds": _float,
    "auto_commit_seconds": _float,
    "commit_throttled_close": _bool,
}
assert set(_PARSERS) == {f.name for f in fields(Faults)}


def parse_faults(pairs: list[tuple[str, str]]) -> Faults:
    """Collect the ``emu_*`` pairs of a decoded query (the last occurrence of a key wins)."""
    faults = Faults()
    for key, value in pairs:
        if not key.startswith("emu_"):
            continue
        name = key[4:]
        parser = _PARSERS.get(name)
        if parser is None:
            raise FaultError(f"unknown emulator parameter {key!r}; known: emu_" + ", emu_".join(sorted(_PARSERS)))
        setattr(faults, name, parser(key, value))
    if faults.close_reason is not None and len(faults.close_reason.encode()) > 123:
        raise FaultError("emu_close_reason must be at most 123 bytes of UTF-8")
    return faults
