"""Charging for audio, sans I/O: which frames may be forwarded, which must be paid first, what the ledger may write.

The :class:`~sttgate.core.metering.Meter` says how many 5-second cycles a frame opens (docs/billing.md). A frame that
opens none is forwarded at once. One that opens ``n``:

- postpaid: the cycles are counted (billed later from the totals) and the frame is forwarded;
- prepaid: the ledger must debit ``n`` cycles first (:attr:`Action.CHARGE`); the shell reports the result with
  :meth:`Billing.settled` (paid: forward; refused: the frame's audio is refunded to the meter and the session is cut
  off, 4002) or :meth:`Billing.charge_failed` (the ledger failed: refunded, cut off, 1011). No unpaid audio is sent.

With a monthly budget (docs/billing.md#budgets) a cycle is opened only while the account's spending this month has
not reached it (:class:`~sttgate.core.budget.BudgetWatch`, kept current by the shell): a cycle that would open past it
cuts the session off instead (:attr:`Action.CUT_OFF` with :attr:`Billing.over_budget`; 4002 "budget exceeded"), its
frame not sent and its audio refunded.

A frame the meter cannot read (:data:`~sttgate.core.metering.UNMETERABLE`, nothing counted) is refused
(:attr:`Action.REFUSE`): it is not sent and the session ends with 1008 "unmeterable audio" (docs/billing.md).

With the **session** basis (docs/billing.md#session-basis) audio opens no cycles: the session's clock does. Cycle
*n+1* is due when the time since the provider's 101 first exceeds *n* × 5 s (cycle 1 when the session is accepted);
:meth:`Billing.due_by_clock` says how many, :meth:`Billing.clock_opened` charges them ahead (prepaid) or books them
(postpaid), and a prepaid clock cycle the balance cannot pay cuts the session off (4002).

The periodic ledger flush writes :meth:`Billing.unflushed` totals: never the audio of a frame whose charge is in
flight (it may yet be refunded), so the totals written never go down.
"""

from __future__ import annotations

import math
from enum import Enum, auto
from typing import NamedTuple

from sttgate.core.budget import BudgetWatch
from sttgate.core.metering import UNMETERABLE, Meter
from sttgate.core.money import CYCLE_SECONDS


class Action(Enum):
    FORWARD = auto()  # send the frame (nothing to pay, or paid)
    CHARGE = auto()  # debit ``Billing.pending`` cycles at the ledger, then report ``settled``/``charge_failed``
    CUT_OFF = auto()  # the balance cannot pay, or the budget is reached: do not send; the session ends (4002)
    REFUSE = auto()  # the meter cannot read the frame as the provider will: do not send; the session ends (1008)


class Totals(NamedTuple):
    """What the ledger holds for a session: audio seconds, cycles, and their cost (cycles × cycle price)."""

    audio_seconds: float
    cycles: int
    cost_nanos: int


class Billing:
    """The money side of one session: counted cycles and cost, the charge in flight, the cut-off."""

    __slots__ = (
        "_written",
        "budget",
        "cost_nanos",
        "cut_off",
        "cycles",
        "meter",
        "over_budget",
        "pending",
        "prepaid",
        "price_nanos",
        "session_basis",
    )

    def __init__(self, meter: Meter, *, prepaid: bool, price_nanos: int, session_basis: bool = False) -> None:
        self.meter = meter
        self.prepaid = prepaid
        # Cycles follow the session's clock, not its audio (docs/billing.md#session-basis).
        self.session_basis = session_basis
        self.price_nanos = price_nanos
        self.cycles = 0
        self.cost_nanos = 0
        # Cycles whose prepaid charge is in flight (0: none): the last metered frame may yet be refunded.
        self.pending = 0
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
        if self.prepaid:
            self.pending = cycles
            return Action.CHARGE
        self._book(cycles)
        return Action.FORWARD

    def rebill(self, prepaid: bool) -> None:
        """The account switched between prepaid and postpaid (docs/billing.md#account-changes): cycles opened from
        now on are charged, or accrue, accordingly. A charge already in flight settles as it was asked."""
        self.prepaid = prepaid

    def settled(self, paid: bool) -> Action:
        """The ledger answered the charge: paid → forward the frame; refused → refund its audio, cut off."""
        cycles, self.pending = self.pending, 0
        if paid:
            self._book(cycles)
            return Action.FORWARD
        self.meter.refund_last(cycles)
        self.cut_off = True
        return Action.CUT_OFF

    def charge_failed(self) -> None:
        """The ledger failed (not a refusal): the frame is not sent, its audio is refunded, the session is cut off."""
        cycles, self.pending = self.pending, 0
        self.meter.refund_last(cycles)
        self.cut_off = True

    # -- the session basis ------------------------------------------------------------------------------------------

    def due_by_clock(self, elapsed_seconds: float) -> int:
        """Session basis: the cycles the clock has opened ``elapsed_seconds`` after the provider's 101 that are neither
        booked nor being charged (cycle 1 at once; cycle *n+1* once the time first exceeds *n* × 5 s)."""
        due = max(1, math.ceil(elapsed_seconds / CYCLE_SECONDS))
        return max(0, due - self.cycles - self.pending)

    def clock_opened(self, cycles: int) -> Action:
        """The clock opened ``cycles`` (> 0): prepaid, charge them ahead (report with :meth:`clock_settled`);
        postpaid, book them; with the month's budget reached, cut off."""
        if self.budget.reached(self.cost_nanos):
            return self._stop_for_budget()
        if self.prepaid:
            self.pending = cycles
            return Action.CHARGE
        self._book(cycles)
        return Action.FORWARD

    def clock_settled(self, paid: bool) -> Action:
        """The ledger answered a clock charge: paid → booked; refused → the session is cut off (4002). There is no
        frame to refund: a clock cycle is time, and the session stops before it runs unpaid."""
        cycles, self.pending = self.pending, 0
        if paid:
            self._book(cycles)
            return Action.FORWARD
        self.cut_off = True
        return Action.CUT_OFF

    def clock_charge_failed(self) -> None:
        """The ledger failed on a clock charge: nothing booked, the session is cut off (1011)."""
        self.pending = 0
        self.cut_off = True

    def _stop_for_budget(self) -> Action:
        self.cut_off = True
        self.over_budget = True
        return Action.CUT_OFF

    def _book(self, cycles: int) -> None:
        self.cycles += cycles
        self.cost_nanos += cycles * self.price_nanos

    @property
    def charge_nanos(self) -> int:
        """The amount the charge in flight debits."""
        return self.pending * self.price_nanos

    # -- the ledger flush -----------------------------------------------------------------------------------------

    def settled_totals(self) -> Totals:
        """The totals a flush may write now: the audio of a frame whose charge is in flight is left out."""
        in_flight = self.pending and not self.session_basis  # a clock charge holds back no frame
        audio = self.meter.audio_seconds_without_last() if in_flight else self.meter.audio_seconds
        return Totals(audio, self.cycles, self.cycles * self.price_nanos)

    def unflushed(self) -> Totals | None:
        """:meth:`settled_totals` if they changed since the last :meth:`written`, else ``None``."""
        totals = self.settled_totals()
        if (totals.audio_seconds, totals.cycles) == self._written:
            return None
        return totals

    def written(self, totals: Totals) -> None:
        """The ledger holds ``totals`` now."""
        self._written = (totals.audio_seconds, totals.cycles)
