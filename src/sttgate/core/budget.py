"""Monthly budgets (docs/billing.md#budgets), sans I/O: when an account's spending this month stops its sessions.

An account may have ``monthly_budget_usd``: once the cost of its sessions started in the current calendar month (UTC)
reaches it, new sessions are refused (402 ``budget_exceeded``) and running ones end at their next cycle (4002
``budget exceeded``). The cycle that reaches the budget is still charged: a budget is a cap on starting more, not a
refund.

A running session cannot ask the database at every cycle, so it keeps a :class:`BudgetWatch`: the budget and what the
account's *other* spending this month was when the session manager last read the account (every
``STTGATE_ACCOUNT_REFRESH_SECONDS``), plus the session's own cost, which it knows exactly. Spending by other sessions
of the account therefore counts within one refresh; the session's own at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

# The shares of the budget at which ``budget.threshold`` is posted (docs/contract.md#account-events).
THRESHOLDS = (50, 80, 100)


def month_start(now: datetime) -> datetime:
    """The first moment of ``now``'s calendar month, UTC (the start of the budget's month)."""
    at = now.astimezone(UTC)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_label(now: datetime) -> str:
    """``yyyy-mm`` of ``now``'s month, UTC (part of a ``budget.threshold`` event's id)."""
    return now.astimezone(UTC).strftime("%Y-%m")


def reached(budget_nanos: int | None, month_cost_nanos: int) -> bool:
    """Whether spending ``month_cost_nanos`` this month has reached the budget (no budget: never)."""
    return budget_nanos is not None and month_cost_nanos >= budget_nanos


def thresholds_passed(budget_nanos: int | None, month_cost_nanos: int) -> tuple[int, ...]:
    """The thresholds (percent of the budget) that ``month_cost_nanos`` has reached; none without a budget. A budget
    of zero is reached by any spending, so all of them."""
    if budget_nanos is None:
        return ()
    return tuple(p for p in THRESHOLDS if month_cost_nanos * 100 >= budget_nanos * p)


class BudgetWatch:
    """One live session's view of its account's budget (see the module's docstring)."""

    __slots__ = ("budget_nanos", "others_nanos")

    def __init__(self) -> None:
        self.budget_nanos: int | None = None
        self.others_nanos = 0

    def refresh(self, budget_nanos: int | None, month_cost_nanos: int, own_cost_nanos: int) -> None:
        """The account as just read: its budget and this month's cost (this session's written cost included, which
        is at most ``own_cost_nanos``, the session's cost now)."""
        self.budget_nanos = budget_nanos
        self.others_nanos = max(0, month_cost_nanos - own_cost_nanos)

    def reached(self, own_cost_nanos: int) -> bool:
        """Whether the account's spending, this session's ``own_cost_nanos`` included, has reached the budget."""
        return reached(self.budget_nanos, self.others_nanos + own_cost_nanos)
