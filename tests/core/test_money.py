from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.money import cycle_price_nanos, format_usd, nanos_to_usd, usd_to_nanos


def test_default_cycle_prices_match_the_spec() -> None:
    assert format_usd(cycle_price_nanos("0.15")) == "0.000208333"
    assert format_usd(cycle_price_nanos("0.39")) == "0.000541667"


def test_twelve_seconds_of_assemblyai_costs_three_cycles() -> None:
    assert format_usd(3 * cycle_price_nanos(Decimal("0.15"))) == "0.000624999"


def test_half_up_rounding_at_the_nano() -> None:
    # 0.0000018 USD/h -> 2.5e-9 USD per cycle: exactly half a nano, which rounds up
    assert cycle_price_nanos("0.0000018") == 3
    assert cycle_price_nanos("0.00000179") == 2


def test_wire_format() -> None:
    assert format_usd(0) == "0"
    assert format_usd(None) is None
    assert format_usd(120_000_000) == "0.120000000"
    assert format_usd(-5) == "-0.000000005"


@pytest.mark.parametrize("bad", ["abc", "1.0000000001", "NaN", "Infinity", ""])
def test_bad_amounts_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        usd_to_nanos(bad)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_nanos_round_trip_exactly(nanos: int) -> None:
    assert usd_to_nanos(nanos_to_usd(nanos)) == nanos
    assert usd_to_nanos(format_usd(nanos)) == nanos
