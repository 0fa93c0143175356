"""Monthly budgets (sttgate.core.budget) and their cut-off in billing (docs/billing.md#budgets)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.billing import Action, Billing
from sttgate.core.budget import BudgetWatch, month_label, month_start, reached, thresholds_passed
from sttgate.core.metering import AudioFormat, BinaryMeter

FMT = AudioFormat(2, 16000)
CYCLE = 5 * FMT.bytes_per_second
PRICE = 1000
nanos = st.integers(min_value=0, max_value=10**15)


def test_the_month_is_the_utc_calendar_month():
    local = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    assert month_start(local) == datetime(2026, 12, 1, tzinfo=UTC)
    # 00:30 on 1 December in Berlin is still November in UTC.
    berlin = datetime(2026, 12, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert month_start(berlin) == datetime(2026, 11, 1, tzinfo=UTC) and month_label(berlin) == "2026-11"


@given(budget=st.none() | nanos, cost=nanos)
def test_reached_and_thresholds(budget, cost):
    assert reached(budget, cost) == (budget is not None and cost >= budget)
    passed = thresholds_passed(budget, cost)
    assert passed == tuple(p for p in (50, 80, 100) if budget is not None and cost * 100 >= budget * p)
    assert (100 in passed) == reached(budget, cost)


@given(budget=nanos, month=nanos, own_then=nanos, extra=nanos)
def test_a_watch_adds_the_sessions_own_spending_to_the_others(budget, month, own_then, extra):
    watch = BudgetWatch()
    assert not watch.reached(10**18)  # no budget seen yet: never
    watch.refresh(budget, month, own_then)
    others = max(0, month - own_then)
    assert watch.reached(own_then + extra) == (others + own_then + extra >= budget)


def test_a_cycle_past_the_budget_is_not_opened_and_its_audio_is_refunded():
    for prepaid in (False, True):
        b = Billing(BinaryMeter(FMT), prepaid=prepaid, price_nanos=PRICE)
        b.budget.refresh(2 * PRICE, 0, 0)
        for _ in range(2):
            action = b.opened(b.meter.binary(bytes(CYCLE)))
            if action is Action.CHARGE:
                action = b.settled(True)
            assert action is Action.FORWARD
        audio = b.meter.audio_seconds
        assert b.opened(b.meter.binary(bytes(3200))) is Action.CUT_OFF
        assert (b.cut_off, b.over_budget, b.cycles, b.cost_nanos, b.charging) == (True, True, 2, 2 * PRICE, False)
        assert b.meter.audio_seconds == audio  # the frame that would open cycle 3 is refunded, not sent


def test_the_session_clock_stops_at_the_budget_too():
    b = Billing(BinaryMeter(FMT), prepaid=False, price_nanos=PRICE, session_basis=True)
    b.budget.refresh(PRICE, 0, 0)
    assert b.clock_opened(b.due_by_clock(0.0)) is Action.FORWARD
    assert b.clock_opened(b.due_by_clock(5.1)) is Action.CUT_OFF and b.over_budget
