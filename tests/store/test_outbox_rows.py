"""The outbox rows a ledger statement writes (store/outbox.py ``event_rows``), property-tested."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.usage_events import event_id
from sttgate.store.outbox import _Before, event_rows


@given(
    steps=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    price=st.integers(0, 10**7),
)
def test_writes_in_any_order_export_each_cycle_once_and_add_up_to_the_cost(steps: list[int], price: int) -> None:
    """Totals written as max(stored, new), in any order and repeated: every cycle up to the highest is exported once,
    and the exported prices add up to the session's cost."""
    stored = (0, 0)
    ids: list[str] = []
    total = 0
    now = datetime(2026, 11, 29, tzinfo=UTC)
    for target in steps:
        cycles, cost = max(stored[0], target), max(stored[1], target * price)
        rows = event_rows({"s": _Before(*stored)}, [("s", cycles, cost, "a", "k", "p", "m", "audio")], now)
        ids += [r["id"] for r in rows]
        total += sum(r["price_nanos"] for r in rows)
        stored = (cycles, cost)
    assert ids == [event_id("s", c) for c in range(1, max(steps) + 1)]
    assert total == max(steps) * price


def test_a_session_not_read_before_the_statement_adds_nothing() -> None:
    assert event_rows({}, [("s", 3, 9, "a", None, "p", None, None)], None) == []
