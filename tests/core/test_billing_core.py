"""Billing decisions (sttgate.core.billing): charge, refund, cut-off, what a ledger flush may write."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.billing import Action, Billing, LedgerWrite, Settlement, Totals, hold_refund, ledger_change
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
    assert b.charging and b.pending == 1 and b.charge == LedgerWrite(charged=1, hold=1) and b.cycles == 0
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


def test_a_tick_without_progress_writes_only_changed_cycles():
    """The periodic flush writes money at once and audio progress alone only on its progress ticks."""
    b = billing(prepaid=False)
    b.opened(b.meter.binary(bytes(3200)))
    assert b.unflushed(progress=False) == Totals(0.1, 1, PRICE)  # a new cycle: written on any tick
    b.written(Totals(0.1, 1, PRICE))
    assert b.meter.binary(bytes(3200)) == 0
    assert b.unflushed(progress=False) is None  # audio alone: waits for a progress tick
    assert b.unflushed(progress=True) == Totals(0.2, 1, PRICE)


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


# -- holds (docs/billing.md#holds) ------------------------------------------------------------------------------------


class Ledger:
    """A model of one prepaid session's ledger, in cycles: the balance, the row's cycles and hold (Slots.settle_cycles,
    end_session)."""

    def __init__(self, balance: int) -> None:
        self.start = balance
        self.balance = balance - 1  # the handshake's hold
        self.cycles = 0
        self.held = 1

    def apply(self, write: LedgerWrite) -> Settlement:
        paid = self.balance >= write.charged
        if paid:
            self.balance -= write.charged
        moved = write.recorded + (write.covered if paid else 0)
        self.held -= min(self.held, moved)
        self.cycles += moved + (write.charged if paid else 0)
        held = paid and 0 < write.hold <= self.balance
        if held:
            self.balance -= write.hold
            self.held += write.hold
        return Settlement(paid, held)

    def end(self, cycles: int) -> None:
        self.balance += self.held - min(self.held, cycles - self.cycles)
        self.cycles, self.held = max(self.cycles, cycles), 0


def held_billing() -> Billing:
    return Billing(BinaryMeter(FMT), prepaid=True, price_nanos=PRICE, holds=1)


def test_a_held_cycle_is_forwarded_and_recorded_in_the_background():
    b = held_billing()
    assert b.opened(b.meter.binary(bytes(3200))) is Action.RECORD
    assert (b.cycles, b.holds, b.unrecorded) == (1, 0, 1)
    assert b.unflushed() == Totals(0.1, 0, 0)  # the ledger still counts that cycle as held
    assert b.next_write() == LedgerWrite(recorded=1, hold=1)
    assert b.next_write() is None  # one at a time
    b.wrote(Settlement(True, True))
    assert (b.holds, b.unrecorded, b.next_write()) == (1, 0, None)
    assert b.unflushed() == Totals(0.1, 1, PRICE)


def test_a_prepaid_write_leaves_no_cycle_for_the_flush_to_write_again():
    """The charge or background write that records a cycle also writes it to the session's row: a tick without
    progress has nothing to write for it, and a progress tick writes the audio (the same cycles, no new money)."""
    b = held_billing()
    b.opened(b.meter.binary(bytes(3200)))
    b.next_write()
    b.wrote(Settlement(True, True))
    assert b.unflushed(progress=False) is None
    assert b.unflushed() == Totals(0.1, 1, PRICE)
    c = billing(prepaid=True)
    c.opened(c.meter.binary(bytes(CYCLE)))
    c.settled(True)
    assert c.unflushed(progress=False) is None
    c.written(Totals(0.0, 0, 0))  # a flush that began before the charge committed ends after it
    assert c.unflushed(progress=False) is None


def test_a_cycle_opened_while_the_write_is_in_flight_waits_for_it():
    b = held_billing()
    b.opened(b.meter.binary(bytes(CYCLE)))
    b.next_write()
    assert b.opened(b.meter.binary(bytes(3200))) is Action.WAIT
    b.wrote(Settlement(True, True))
    assert b.resume() is Action.RECORD and b.cycles == 2  # the new hold pays it


def test_a_refused_hold_cuts_nothing_off_the_next_cycle_is_charged():
    b = held_billing()
    b.opened(b.meter.binary(bytes(CYCLE)))
    b.next_write()
    b.wrote(Settlement(True, False))
    assert not b.cut_off
    assert b.opened(b.meter.binary(bytes(3200))) is Action.CHARGE
    assert b.charge == LedgerWrite(charged=1, hold=1)


def test_a_failed_write_goes_with_the_next_charge():
    b = held_billing()
    b.opened(b.meter.binary(bytes(CYCLE)))
    b.next_write()
    b.write_failed()
    assert b.next_write() is None and b.unrecorded == 1 and not b.cut_off
    assert b.opened(b.meter.binary(bytes(CYCLE + 3200))) is Action.CHARGE  # a frame opening two cycles
    assert b.charge == LedgerWrite(recorded=1, charged=2, hold=1)
    assert b.settled(True, True) is Action.FORWARD
    assert (b.cycles, b.unrecorded, b.holds) == (3, 0, 1)


def test_a_frame_opening_more_cycles_than_held_uses_the_hold_and_charges_the_rest():
    b = held_billing()
    assert b.opened(b.meter.binary(bytes(CYCLE + 3200))) is Action.CHARGE
    assert b.charge == LedgerWrite(covered=1, charged=1, hold=1)
    assert b.settled(False) is Action.CUT_OFF
    assert (b.cycles, b.holds, b.meter.audio_seconds) == (0, 1, 0.0)  # not sent: the hold is left, refunded at the end


@given(
    balance=st.integers(1, 8),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("frame"), st.integers(1, 200_000)),
            st.tuples(st.sampled_from(["write", "write_fails", "flush"]), st.just(0)),
        ),
        max_size=80,
    ),
    ledger_fails=st.sets(st.integers(0, 20)),
)
def test_holds_never_forward_unpaid_audio_nor_overdraw_nor_bill_twice(balance, steps, ledger_fails):
    """Random frames, background writes that complete late or fail, flushes: the balance never goes below zero, every
    opened cycle is paid (recorded or held), the ledger never counts a cycle twice, and after the end the customer has
    paid exactly the cycles opened."""
    b = Billing(BinaryMeter(FMT), prepaid=True, price_nanos=PRICE, holds=1)
    ledger = Ledger(balance)
    forwarded = 0
    writes = 0

    def fails() -> bool:
        nonlocal writes
        writes += 1
        return writes - 1 in ledger_fails

    def finish_write(fail: bool) -> None:
        if b.write is None:
            return
        if fail:
            b.write_failed()
        else:
            b.wrote(ledger.apply(b.write))
        b.next_write()

    for kind, size in steps:
        if kind == "frame":
            opened = b.meter.binary(bytes(size))
            action = b.opened(opened) if opened else Action.FORWARD
            if action is Action.WAIT:
                finish_write(fails())
                action = b.resume()
            if action is Action.CHARGE:
                assert b.charge is not None
                if fails():
                    b.charge_failed()
                    break
                action = b.settled(*ledger.apply(b.charge))
            if action is Action.RECORD:
                b.next_write()
            elif action is Action.CUT_OFF:
                break
            forwarded += size
        elif kind == "flush":
            totals = b.unflushed()
            if totals is not None:
                assert totals.cycles <= ledger.cycles  # a flush never writes a cycle the ledger holds
                b.written(totals)
        else:
            finish_write(kind == "write_fails")
        assert ledger.balance >= 0
        assert ledger.start - ledger.balance == ledger.cycles + ledger.held  # every debit is a cycle or a hold
        assert ledger.cycles <= b.cycles <= ledger.cycles + ledger.held  # never twice; every opened cycle paid
    finish_write(False)  # the end waits for the write in flight
    assert b.meter.audio_seconds == forwarded / FMT.bytes_per_second
    assert b.cycles == math.ceil(forwarded / CYCLE)
    ledger.end(b.cycles)
    assert ledger.cycles == b.cycles and ledger.start - ledger.balance == b.cycles


# -- what the ledger does with a write, and with a hold at the end ------------------------------------------------


@given(
    recorded=st.integers(0, 3),
    covered=st.integers(0, 3),
    charged=st.integers(0, 3),
    hold=st.integers(0, 1),
    paid=st.booleans(),
    debited=st.booleans(),
    live=st.booleans(),
    held=st.integers(0, 3),
)
def test_a_ledger_write_moves_only_what_it_may(
    recorded: int, covered: int, charged: int, hold: int, paid: bool, debited: bool, live: bool, held: int
) -> None:
    write = LedgerWrite(recorded=recorded, covered=covered, charged=charged, hold=hold)
    change = ledger_change(write, PRICE, paid, debited, live, held, held * PRICE)
    # Live: recorded cycles always, the frame's covered cycles only when paid. An ended session records nothing from
    # its holds (its end settled them) and takes no new hold; cycles the balance was debited for are always its cost.
    opened_from_holds = recorded + (covered if paid else 0) if live else 0
    assert change.taken == min(held, opened_from_holds) and change.taken_nanos == change.taken * PRICE
    assert change.added == opened_from_holds + (charged if paid and debited else 0)
    assert change.added_nanos == change.added * PRICE
    assert change.hold == (hold if paid and live else 0)
    moves = change.increments(held=False)  # a hold the balance refused adds nothing held
    assert moves.get("held_cycles", 0) == -change.taken


@given(cost=st.integers(0, 10), extra=st.integers(-2, 5), held=st.integers(0, 2))
def test_a_hold_is_refunded_less_what_the_session_opened_from_it(cost: int, extra: int, held: int) -> None:
    refund = hold_refund(cost * PRICE, (cost + extra) * PRICE, held * PRICE)
    assert 0 <= refund <= held * PRICE
    # The cost beyond the row's was paid by the hold, up to what it holds; the rest goes back.
    assert refund == max(0, held - max(0, extra)) * PRICE
