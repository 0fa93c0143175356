"""The usage window (docs/contract.md#usage): one reading of ``since``/``until`` for the CLI and the API."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttgate.admin.window import InvalidWindow, moment, window


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_date_alone_is_the_whole_utc_day() -> None:
    assert window("2026-11-29", "2026-11-29") == (utc(2026, 11, 29), utc(2026, 11, 30))
    assert window("2026-12-31", None) == (utc(2026, 12, 31), None)
    assert window(None, "2026-12-31") == (None, utc(2027, 1, 1))
    assert window(None, "2024-02-28") == (None, utc(2024, 2, 29))
    assert window("20261129", None) == (utc(2026, 11, 29), None)  # ISO 8601 basic format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T10:15", utc(2026, 11, 29, 10, 15)),  # no offset: UTC
        ("2026-11-29T10:15:30.250", utc(2026, 11, 29, 10, 15, 30, 250_000)),
        ("2026-11-29T10:15Z", utc(2026, 11, 29, 10, 15)),
        ("2026-11-29T10:15:00+02:00", utc(2026, 11, 29, 8, 15)),
        ("2026-11-29T23:30:00-05:00", utc(2026, 11, 30, 4, 30)),
        ("2026-11-29T00:00:00", utc(2026, 11, 29)),  # a time, even midnight, is that instant, not the whole day
    ],
)
def test_a_time_is_that_instant_on_either_bound(text: str, expected: datetime) -> None:
    assert moment(text, end=False) == moment(text, end=True) == expected
    assert moment(text, end=True).tzinfo is UTC


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01", "2026-11-31", "29/11/2026", "2026-11-29T25:00", "now", "1732875000"]
)
def test_bad_values_are_refused_with_one_line(text: str) -> None:
    for since, until in ((text, None), (None, text)):
        with pytest.raises(InvalidWindow) as refused:
            window(since, until)
        assert "ISO 8601" in str(refused.value) and "\n" not in str(refused.value)


def test_out_of_range_values_are_refused_not_crashes() -> None:
    with pytest.raises(InvalidWindow):
        window(None, "9999-12-31")
    with pytest.raises(InvalidWindow):
        window("0001-01-01T00:00+01:00", None)


def test_a_window_must_not_end_before_it_starts() -> None:
    with pytest.raises(InvalidWindow, match="before"):
        window("2026-02-01", "2026-01-01")
    with pytest.raises(InvalidWindow, match="before"):
        window("2026-01-01T12:00", "2026-01-01T12:00")
    assert window("2026-01-01T12:00", "2026-01-01T12:00:00.000001")[1] == utc(2026, 1, 1, 12, 0, 0, 1)


@given(st.dates(min_value=datetime(1, 1, 2).date(), max_value=datetime(9999, 12, 30).date()))
def test_until_a_day_is_since_the_next(day: date) -> None:
    iso = day.isoformat()
    assert moment(iso, end=True) == moment((day + timedelta(days=1)).isoformat(), end=False)
    assert moment(iso, end=True) - moment(iso, end=False) == timedelta(days=1)
