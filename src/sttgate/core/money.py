"""Money as integer nano-dollars (1e-9 USD): exact, fast, never a float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
CYCLE_SECONDS = 5
_NANO = Decimal("1e-9")


# Far above any real amount, and small enough that its nano-dollars fit a 64-bit integer (the database's BIGINT).
MAX_USD = 10**9


def usd_to_nanos(usd: Decimal | str | int) -> int:
    """Parse a USD amount; more than 9 decimals is an error, not a silent rounding."""
    try:
        value = Decimal(str(usd))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {usd!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {usd!r}")
    if abs(value) >= MAX_USD:
        raise ValueError(f"amounts must be below {MAX_USD:,} USD: {usd!r}")
    if value.quantize(_NANO) != value:
        raise ValueError(f"amounts have at most 9 decimals: {usd!r}")
    return int(value.scaleb(9))


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9).quantize(_NANO)


def format_usd(nanos: int | None) -> str | None:
    """The wire form of an amount: a decimal string with 9 places, ``"0"`` for nothing."""
    if nanos is None:
        return None
    if nanos == 0:
        return "0"
    return f"{nanos_to_usd(nanos):f}"


def cycle_price_nanos(rate_usd_per_hour: Decimal | str) -> int:
    """Price of one 5-second cycle: ``rate × 5 / 3600`` rounded half-up to 1e-9 USD."""
    price = Decimal(str(rate_usd_per_hour)) * CYCLE_SECONDS / 3600
    return int(price.quantize(_NANO, rounding=ROUND_HALF_UP).scaleb(9))
