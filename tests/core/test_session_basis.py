"""Session-basis billing (docs/billing.md#session-basis), pure: the clock opens the cycles, charged ahead."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.billing import Action, Billing, LedgerWrite, Settlement
from sttgate.core.metering import AudioFormat, BinaryMeter

SECOND = bytes(32000)  # 1 s of 16 kHz s16le


def session(prepaid: bool) -> tuple[Billing, BinaryMeter]:
    meter = BinaryMeter(AudioFormat(2, 16000))
    return Billing(meter, prepaid=prepaid, price_nanos=100, session_basis=True), meter


def test_audio_opens_no_cycle_but_is_metered() -> None:
    billing, meter = session(prepaid=True)
    for _ in range(12):
        opened = meter.binary(SECOND)
        assert opened == 0 or billing.opened(opened) is Action.FORWARD
    assert (billing.cycles, billing.pending, meter.audio_seconds) == (0, 0, 12.0)


@given(st.floats(min_value=0, max_value=36_000, allow_nan=False))
def test_the_clock_charges_ceil_of_the_session_time_at_least_one(elapsed: float) -> None:
    billing, _ = session(prepaid=False)
    opened = billing.due_by_clock(elapsed)
    assert billing.clock_opened(opened) is Action.FORWARD
    assert billing.cycles == max(1, math.ceil(elapsed / 5))
    assert billing.due_by_clock(elapsed) == 0  # nothing twice


def test_cycles_open_when_the_clock_first_exceeds_each_boundary() -> None:
    billing, _ = session(prepaid=False)
    assert billing.due_by_clock(0.0) == 1
    billing.clock_opened(1)
    assert billing.due_by_clock(5.0) == 0 and billing.due_by_clock(5.001) == 1


def test_a_prepaid_clock_cycle_is_charged_ahead_and_cut_off_when_unpaid() -> None:
    billing, _ = session(prepaid=True)
    assert billing.clock_opened(billing.due_by_clock(0.0)) is Action.CHARGE
    assert billing.due_by_clock(0.0) == 0  # in flight: not asked twice
    assert billing.settled(paid=True) is Action.FORWARD and billing.cycles == 1
    assert billing.clock_opened(billing.due_by_clock(5.2)) is Action.CHARGE
    assert billing.settled(paid=False) is Action.CUT_OFF
    assert (billing.cycles, billing.cost_nanos, billing.cut_off) == (1, 100, True)


def test_a_failing_ledger_books_nothing_and_cuts_off() -> None:
    billing, _ = session(prepaid=True)
    billing.clock_opened(1)
    billing.charge_failed()
    assert (billing.cycles, billing.pending, billing.cut_off) == (0, 0, True)


def test_the_handshake_hold_pays_cycle_1_and_the_clock_takes_no_more() -> None:
    """docs/billing.md#holds: the clock is not the frame path, so it charges ahead as before and holds nothing."""
    meter = BinaryMeter(AudioFormat(2, 16000))
    billing = Billing(meter, prepaid=True, price_nanos=100, session_basis=True, holds=1)
    assert billing.clock_opened(billing.due_by_clock(0.0)) is Action.RECORD
    assert billing.next_write() == LedgerWrite(recorded=1)
    billing.wrote(Settlement(True))
    assert billing.clock_opened(billing.due_by_clock(5.2)) is Action.CHARGE
    assert billing.charge == LedgerWrite(charged=1)
