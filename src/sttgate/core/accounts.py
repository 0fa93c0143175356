"""How a change to an account binds its live sessions (docs/billing.md#account-changes): pure, no I/O.

An operator may change an account while its sessions run: switch it between prepaid and postpaid, change its balance,
or withdraw its streaming permission. Balance changes need nothing here: every prepaid cycle is a conditional debit
of the balance as it is then. The rest is decided from the account as last read (every
``STTGATE_ACCOUNT_REFRESH_SECONDS``): a session follows its account's billing mode from its next cycle on, and a
session whose account may no longer stream is closed with 1008 ``streaming disabled``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sttgate.core.closecodes import STREAMING_DISABLED, Close


@dataclass(frozen=True, slots=True)
class AccountState:
    """What a live session needs to know of its account."""

    streaming_enabled: bool
    prepaid: bool  # False: postpaid (cycles accrue, nothing is debited)


@dataclass(frozen=True, slots=True)
class Binding:
    """What a session does about its account's current state: bill its next cycles prepaid or not, or close."""

    prepaid: bool
    close: Close | None


def bind(state: AccountState) -> Binding:
    """The account as last read → the session's billing mode from its next cycle on, and whether it must close."""
    return Binding(prepaid=state.prepaid, close=None if state.streaming_enabled else STREAMING_DISABLED)
