"""Billing decisions (sttgate.core.billing): charge, refund, cut-off, what a ledger flush may write."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.billing import Action, Billing, Totals
from sttgate.core.metering import UNMETERABLE, AudioFormat, BinaryMeter, ChunkMeter

FMT = AudioFormat(2, 16000)  # 32,000 bytes per second: one cycle is 160,000 bytes
CYCLE = 5 * FMT.bytes_per_second
PRICE = 1000


def billing(*, prepaid: bool) -> Billing:
    return Billing(BinaryMeter(FMT), prepaid=prepaid, price_nanos=PRICE)


def test_postpaid_counts_the_cycle_and_forwards():
    b = billing(prepaid=False)
    assert b.opened(b.meter.binary(bytes(3200))) is Action.FORWARD
    assert (b.cycles, b.cost_nanos, b.charging) == (1, PRICE, False)


def test_an_unmeterable_frame_is_refused_and_counts_nothing():
    """docs/billing.md#strict-metering: not forwarded, nothing charged or counted, the session ends (1008)."""
    meter = ChunkMeter(FMT, lambda text: (-1, None) if text == "bad" else (len(text), None), [16000], 32000)
    for prepaid in (False, True):
        b = Billing(meter, prepaid=prepaid, price_nanos=PRICE)
        assert meter.text("bad") == UNMETERABLE
        assert b.opened(UNMETERABLE) is Action.REFUSE
        assert (b.cycles, b.cost_nanos, b.charging, b.cut_off) == (0, 0, False, False)
        assert meter.audio_exact == 0 and b.unflushed() is None


def test_prepaid_charges_first_then_forwards_when_paid():
    b = billing(prepaid=True)
    assert b.opened(b.meter.binary(bytes(3200))) is Action.CHARGE
    assert b.charging and b.pending == 1 and b.charge_nanos == PRICE and b.cycles == 0
    assert b.settled(True) is Action.FORWARD
    assert (b.cycles, b.cost_nanos, b.charging, b.cut_off) == (1, PRICE, False, False)


def test_a_refused_charge_refunds_the_frame_and_cuts_off():
    b = billing(prepaid=True)
    b.opened(b.meter.binary(bytes(CYCLE)))
    b.settled(True)
    b.opened(b.meter.binary(bytes(3200)))
    assert b.settled(False) is Action.CUT_OFF
    assert b.cut_off and (b.cycles, b.meter.audio_seconds, b.meter.cycles) == (1, 5.0, 1)


def test_a_failed_charge_refunds_the_frame_and_cuts_off():
    b = billing(prepaid=True)
    b.opened(b.meter.binary(bytes(3200)))
    b.charge_failed()
    assert b.cut_off and not b.charging and (b.cycles, b.meter.audio_seconds) == (0, 0.0)


def test_a_flush_never_writes_the_frame_whose_charge_is_in_flight():
    b = billing(prepaid=True)
    b.opened(b.meter.binary(bytes(CYCLE)))
    b.settled(True)
    assert b.unflushed() == Totals(5.0, 1, PRICE)
    b.written(b.unflushed())
    assert b.unflushed() is None
    b.opened(b.meter.binary(bytes(3200)))  # charge in flight
    assert b.unflushed() is None  # the 0.1 s may yet be refunded
    b.settled(True)
    assert b.unflushed() == Totals(5.1, 2, 2 * PRICE)


def test_postpaid_flush_writes_everything_metered():
    b = billing(prepaid=False)
    b.opened(b.meter.binary(bytes(3200)))
    assert b.unflushed() == Totals(0.1, 1, PRICE)
    b.written(b.unflushed())
    assert b.meter.binary(bytes(3200)) == 0
    assert b.unflushed() == Totals(0.2, 1, PRICE)


@given(
    frames=st.lists(st.integers(1, 40_000), max_size=60),
    balance=st.integers(0, 12),
    refuse_ledger_at=st.one_of(st.none(), st.integers(0, 20)),
    flush_points=st.sets(st.integers(0, 60)),
)
def test_prepaid_never_forwards_unpaid_audio(frames, balance, refuse_ledger_at, flush_points):
    """Random frame sizes and balances: forwarded audio is always paid, cycles = ceil(audio / 5 s), written totals
    never go down."""
    b = billing(prepaid=True)
    left = balance
    forwarded = 0
    charges = 0
    last_written = Totals(0.0, 0, 0)
    for i, size in enumerate(frames):
        opened = b.meter.binary(bytes(size))
        action = b.opened(opened) if opened else Action.FORWARD
        if i in flush_points:
            totals = b.unflushed()
            if totals is not None:
                assert totals.audio_seconds >= last_written.audio_seconds and totals.cycles >= last_written.cycles
                b.written(totals)
                last_written = totals
        if action is Action.CHARGE:
            if charges == refuse_ledger_at:
                b.charge_failed()
                break
            charges += 1
            paid = left >= b.pending
            if paid:
                left -= b.pending
            action = b.settled(paid)
        if action is Action.CUT_OFF:
            break
        forwarded += size
    assert b.meter.audio_seconds == forwarded / FMT.bytes_per_second
    assert b.cycles == math.ceil(forwarded / CYCLE) == balance - left
    assert b.cost_nanos == b.cycles * PRICE
    assert not b.charging


@given(st.lists(st.integers(1, 40_000), max_size=60))
def test_postpaid_cycles_are_ceil_of_the_audio_whatever_the_split(frames):
    b = billing(prepaid=False)
    for size in frames:
        opened = b.meter.binary(bytes(size))
        if opened:
            assert b.opened(opened) is Action.FORWARD
    assert b.cycles == math.ceil(sum(frames) / CYCLE)
