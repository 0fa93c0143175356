"""Charging for audio, sans I/O: which frames may be forwarded, which must be paid first, what the ledger may write.

The :class:`~sttgate.core.metering.Meter` says how many 5-second cycles a frame opens (docs/billing.md). A frame that
opens none is forwarded at once. One that opens ``n``:

- paid ahead by **holds** (docs/billing.md#holds): a prepaid session's ledger holds one cycle debited ahead (taken
  with its slot, then after each cycle it pays). A frame whose cycles the holds cover is forwarded at once
  (:attr:`Action.RECORD`): the shell then writes, in the background and at most one write at a time per session,
  :meth:`Billing.next_write` (the cycles opened from holds become the session's cycles, no balance move, and the next
  hold is debited if the balance allows) and reports it with :meth:`Billing.wrote` or :meth:`Billing.write_failed`.
  A failed write loses nothing: its cycles stay unrecorded and go with the next write, or with the session's end;
- postpaid: the cycles are counted (billed later from the totals) and the frame is forwarded;
- prepaid, not covered (no hold: refused earlier, or its write still in flight, or a frame opening more cycles than
  are held): the frame waits with the client's reading paused. With a write in flight (:attr:`Action.WAIT`) the shell
  waits for it, then asks :meth:`Billing.resume`; otherwise (:attr:`Action.CHARGE`) it performs :attr:`Billing.charge`
  at once: one transaction that records the unrecorded cycles, pays the frame's cycles from the holds left and the
  balance (all or nothing) and takes the next hold. It reports with :meth:`Billing.settled` (paid: forward; refused:
  the frame's audio is refunded to the meter and the session is cut off, 4002) or :meth:`Billing.charge_failed` (the
  ledger failed: refunded, cut off, 1011). No unpaid audio is sent, and a hold the balance refuses cuts nothing off
  by itself: only a cycle that neither a hold nor the balance pays does.

Holds are consumed whatever the account's mode (a hold is already paid): an account switched to postpaid uses its
session's hold first. What the ledger does with a write (:func:`ledger_change`) and what a session's end gives back of
a hold it did not use (:func:`hold_refund`) are decided here too; the store performs them in one transaction.

With a monthly budget (docs/billing.md#budgets) a cycle is opened only while the account's spending this month has
not reached it (:class:`~sttgate.core.budget.BudgetWatch`, kept current by the shell): a cycle that would open past it
cuts the session off instead (:attr:`Action.CUT_OFF` with :attr:`Billing.over_budget`; 4002 "budget exceeded"), its
frame not sent and its audio refunded.

A frame the meter cannot read (:data:`~sttgate.core.metering.UNMETERABLE`, nothing counted) is refused
(:attr:`Action.REFUSE`): it is not sent and the session ends with 1008 "unmeterable audio" (docs/billing.md).

With the **session** basis (docs/billing.md#session-basis) audio opens no cycles: the session's clock does. Cycle
*n+1* is due when the time since the provider's 101 first exceeds *n* × 5 s (cycle 1 when the session is accepted);
:meth:`Billing.due_by_clock` says how many, :meth:`Billing.clock_opened` opens them: from the handshake's hold
(cycle 1), charged ahead (prepaid) or booked (postpaid); the clock takes no further holds (it runs in a task of its
own, not on the frame path), and a prepaid clock cycle the balance cannot pay cuts the session off (4002).

The periodic ledger flush writes :meth:`Billing.unflushed` totals: never the audio of a frame whose charge is in
flight (it may yet be refunded), and never cycles a hold paid that the ledger has not recorded as opened (it still
counts them as held), so the totals written never go down and no cycle is counted twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum, auto
from typing import NamedTuple

from sttgate.core.budget import BudgetWatch
from sttgate.core.metering import UNMETERABLE, Meter
from sttgate.core.money import CYCLE_SECONDS


class Action(Enum):
    FORWARD = auto()  # send the frame (nothing to pay, or paid)
    RECORD = auto()  # send the frame (a hold paid it), and start ``Billing.next_write()`` in the background
    CHARGE = auto()  # perform ``Billing.charge`` at the ledger, then report ``settled``/``charge_failed``
    WAIT = auto()  # a ledger write is in flight: wait for it, then ask ``Billing.resume()``
    CUT_OFF = auto()  # the balance cannot pay, or the budget is reached: do not send; the session ends (4002)
    REFUSE = auto()  # the meter cannot read the frame as the provider will: do not send; the session ends (1008)


class LedgerWrite(NamedTuple):
    """One ledger transaction for a session, in cycles at the session's price.

    ``recorded``: cycles opened from holds, written now as the session's cycles (no balance move); ``covered``: of
    the waiting frame's cycles, those the holds left pay; ``charged``: the rest, debited from the balance all or
    nothing (refused: neither ``covered`` nor ``charged`` is written, ``recorded`` still is); ``hold``: cycles to
    debit ahead afterwards if the balance allows (a refusal there is no cut-off)."""

    recorded: int = 0
    covered: int = 0
    charged: int = 0
    hold: int = 0


class Settlement(NamedTuple):
    """What the ledger did with a :class:`LedgerWrite`: ``paid`` (its frame's cycles) and ``held`` (its hold)."""

    paid: bool
    held: bool = False


class Totals(NamedTuple):
    """What the ledger holds for a session: audio seconds, cycles, and their cost (cycles × cycle price)."""

    audio_seconds: float
    cycles: int
    cost_nanos: int


class Billing:
    """The money side of one session: counted cycles and cost, holds, the ledger write in flight, the cut-off."""

    __slots__ = (
        "_frame",
        "_ledger_down",
        "_written",
        "budget",
        "charge",
        "cost_nanos",
        "cut_off",
        "cycles",
        "holds",
        "meter",
        "over_budget",
        "pending",
        "prepaid",
        "price_nanos",
        "session_basis",
        "unrecorded",
        "write",
    )

    def __init__(
        self, meter: Meter, *, prepaid: bool, price_nanos: int, session_basis: bool = False, holds: int = 0
    ) -> None:
        self.meter = meter
        self.prepaid = prepaid
        # Cycles follow the session's clock, not its audio (docs/billing.md#session-basis).
        self.session_basis = session_basis
        self.price_nanos = price_nanos
        self.cycles = 0
        self.cost_nanos = 0
        # Cycles the ledger holds for this session that no cycle used yet (the handshake took one for a prepaid
        # account), and cycles opened from holds that the ledger still counts as held (not written as cycles yet).
        self.holds = holds
        self.unrecorded = 0
        # The background write in flight, and the synchronous charge prepared for the waiting frame (None: none).
        self.write: LedgerWrite | None = None
        self.charge: LedgerWrite | None = None
        # Cycles waiting for the ledger (0: none): the last metered frame (or clock) may yet be refunded.
        self.pending = 0
        self._frame = False  # the cycles pending are a frame's (refunded to the meter when unpaid), not the clock's
        self._ledger_down = False  # the last write failed: no background retry until the next cycle opens
        self.cut_off = False
        # The account's monthly budget as the shell last saw it, and whether it is what cut the session off.
        self.budget = BudgetWatch()
        self.over_budget = False
        self._written: tuple[float, int] = (0.0, 0)

    @property
    def charging(self) -> bool:
        return self.pending != 0

    def opened(self, cycles: int) -> Action:
        """The last metered frame opened ``cycles`` (> 0) new cycles, or was :data:`UNMETERABLE`."""
        if cycles == UNMETERABLE:
            return Action.REFUSE
        if self.session_basis:  # audio is metered (usage shows it) but the clock opens the cycles
            return Action.FORWARD
        if self.budget.reached(self.cost_nanos):
            self.meter.refund_last(cycles)
            return self._stop_for_budget()
        self._frame = True
        return self._open(cycles)

    def _open(self, cycles: int) -> Action:
        self._ledger_down = False
        if self.holds >= cycles:  # paid ahead, whatever the mode: forward now, record in the background
            self.holds -= cycles
            self.unrecorded += cycles
            self._book(cycles)
            return Action.RECORD
        if not self.prepaid:
            self._book(cycles)
            return Action.FORWARD
        self.pending = cycles
        if self.write is not None:
            return Action.WAIT
        return self.resume()

    def resume(self) -> Action:
        """The waiting cycles, once no write is in flight: a hold the write took may pay them now (RECORD), an account
        made postpaid meanwhile books them (FORWARD), else the synchronous :attr:`charge` (CHARGE)."""
        assert self.write is None and self.pending
        if self.charge is not None:
            return Action.CHARGE
        cycles = self.pending
        if self.holds >= cycles or not self.prepaid:
            self.pending = 0
            return self._open(cycles)
        covered = self.holds
        self.charge = LedgerWrite(self.unrecorded, covered, cycles - covered, self._hold_wanted(covered))
        return Action.CHARGE

    def _hold_wanted(self, used: int) -> int:
        """One cycle held ahead while prepaid on the audio basis, when none would be left after ``used``."""
        return int(self.prepaid and not self.session_basis and self.holds - used <= 0)

    def next_write(self) -> LedgerWrite | None:
        """The background write due now, marked in flight: the cycles opened from holds and the next hold. None while
        one is in flight, a frame waits (its charge records them), or after a failure until a new cycle opens."""
        if self.write is not None or self.pending or self._ledger_down or not self.unrecorded:
            return None
        self.write = LedgerWrite(recorded=self.unrecorded, hold=self._hold_wanted(0))
        return self.write

    def wrote(self, result: Settlement) -> None:
        """The background write committed (``result.held``: the balance paid its hold)."""
        write, self.write = self.write, None
        assert write is not None
        self.unrecorded -= write.recorded
        if result.held:
            self.holds += write.hold
        self._recorded_written()

    def write_failed(self) -> None:
        """The background write failed (the database): its cycles stay unrecorded, for the next write or the end; no
        new hold, so the next cycle is charged synchronously."""
        self.write = None
        self._ledger_down = True

    def rebill(self, prepaid: bool) -> None:
        """The account switched between prepaid and postpaid (docs/billing.md#account-changes): cycles opened from
        now on are charged, or accrue, accordingly (a hold already taken pays first). A charge already in flight
        settles as it was asked."""
        self.prepaid = prepaid

    def settled(self, paid: bool, held: bool = False) -> Action:
        """The ledger answered :attr:`charge`: paid → forward the frame (``held``: its hold was taken too); refused →
        refund its audio (a frame's; the clock's cycles have none), cut off. The unrecorded cycles it carried are
        written either way."""
        charge, self.charge = self.charge or LedgerWrite(charged=self.pending), None
        cycles, self.pending = self.pending, 0
        self.unrecorded -= charge.recorded
        if paid:
            self.holds -= charge.covered
            if held:
                self.holds += charge.hold
            self._book(cycles)
            self._recorded_written()
            return Action.FORWARD
        self._recorded_written()
        if self._frame:
            self.meter.refund_last(cycles)
        self.cut_off = True
        return Action.CUT_OFF

    def charge_failed(self) -> None:
        """The ledger failed (not a refusal): the frame is not sent, its audio is refunded, the session is cut off."""
        cycles, self.pending, self.charge = self.pending, 0, None
        if self._frame:
            self.meter.refund_last(cycles)
        self.cut_off = True

    # -- the session basis ------------------------------------------------------------------------------------------

    def due_by_clock(self, elapsed_seconds: float) -> int:
        """Session basis: the cycles the clock has opened ``elapsed_seconds`` after the provider's 101 that are neither
        booked nor being charged (cycle 1 at once; cycle *n+1* once the time first exceeds *n* × 5 s)."""
        due = max(1, math.ceil(elapsed_seconds / CYCLE_SECONDS))
        return max(0, due - self.cycles - self.pending)

    def clock_opened(self, cycles: int) -> Action:
        """The clock opened ``cycles`` (> 0): from a hold (RECORD: write :meth:`next_write`), charged ahead (CHARGE:
        report with :meth:`settled`; refused, the session is cut off with no frame to refund: a clock cycle is time,
        and the session stops before it runs unpaid) or, postpaid, booked (FORWARD); with the month's budget
        reached, cut off. The clock awaits its own writes, so none is in flight here."""
        if self.budget.reached(self.cost_nanos):
            return self._stop_for_budget()
        self._frame = False
        return self._open(cycles)

    def _stop_for_budget(self) -> Action:
        self.cut_off = True
        self.over_budget = True
        return Action.CUT_OFF

    def _book(self, cycles: int) -> None:
        self.cycles += cycles
        self.cost_nanos += cycles * self.price_nanos

    # -- the ledger flush -----------------------------------------------------------------------------------------

    def settled_totals(self) -> Totals:
        """The totals a flush may write now: the audio of a frame whose charge is in flight is left out, and so are
        cycles opened from holds that the ledger has not recorded (it counts them as held: written by a flush too,
        they would be counted twice)."""
        in_flight = self.pending and self._frame  # a clock charge holds back no frame
        audio = self.meter.audio_seconds_without_last() if in_flight else self.meter.audio_seconds
        recorded = self.cycles - self.unrecorded
        return Totals(audio, recorded, recorded * self.price_nanos)

    def unflushed(self, progress: bool = True) -> Totals | None:
        """:meth:`settled_totals` if they changed since the last :meth:`written`, else ``None``. Without
        ``progress``, only if their cycles changed: a tick writes money at once, and a session's audio alone (it
        changes with every frame of every live session) only on the ticks that write progress."""
        totals = self.settled_totals()
        audio, cycles = self._written
        if totals.cycles == cycles and (not progress or totals.audio_seconds == audio):
            return None
        return totals

    def written(self, totals: Totals) -> None:
        """The ledger holds ``totals`` now (a flush wrote them; its cycles may lag a charge committed meanwhile)."""
        self._written = (totals.audio_seconds, max(totals.cycles, self._written[1]))

    def _recorded_written(self) -> None:
        """A prepaid write committed: the session's row holds every recorded cycle now (the write added them, with
        their cost), so a flush has no cycle to write for them; only audio progress, on its progress ticks."""
        audio, cycles = self._written
        self._written = (audio, max(cycles, self.cycles - self.unrecorded))


# -- what the ledger does with a write and at the end (docs/billing.md#holds) ---------------------------------------


@dataclass(frozen=True)
class LedgerChange:
    """What a ledger write (the store's ``settle_cycles``, in every implementation) does to the session's row once the
    charge is decided: cycles and cost added, taken from the hold, and the hold to debit ahead."""

    added: int
    added_nanos: int
    taken: int
    taken_nanos: int
    hold: int
    hold_nanos: int

    def increments(self, held: bool) -> dict[str, int]:
        """The row's columns and what to add to each (only those that move); ``held``: the hold was debited."""
        moves = {
            "cycles": self.added,
            "cost_nanos": self.added_nanos,
            "held_cycles": (self.hold if held else 0) - self.taken,
            "held_nanos": (self.hold_nanos if held else 0) - self.taken_nanos,
        }
        return {k: v for k, v in moves.items() if v}


def ledger_change(
    write: LedgerWrite, price_nanos: int, paid: bool, debited: bool, live: bool, held_cycles: int, held_nanos: int
) -> LedgerChange:
    """The row's change for ``write`` (the store's ``settle_cycles``): ``paid`` the frame's cycles are paid,
    ``debited`` the balance was (False for a postpaid account: its charged cycles are the flush's), ``live`` the
    session has not ended, ``held_*`` what the row holds."""
    moved = write.recorded + (write.covered if paid else 0) if live else 0
    added = moved + (write.charged if paid and debited and write.charged else 0)
    hold = write.hold if paid and live else 0
    return LedgerChange(
        added,
        added * price_nanos,
        min(held_cycles, moved),
        min(held_nanos, moved * price_nanos),
        hold,
        hold * price_nanos,
    )


def hold_refund(cost_nanos: int, final_cost_nanos: int, held_nanos: int) -> int:
    """At a session's end: the part of its hold not used. The cost the gateway reports beyond the row's was paid from
    the hold (never more than held: beyond it, cycles a postpaid account accrued); the rest goes back."""
    return held_nanos - min(held_nanos, max(0, final_cost_nanos - cost_nanos))
