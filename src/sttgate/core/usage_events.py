"""Usage events, sans I/O: which charged cycles a ledger statement turns into events, their ids, and what each sink
is sent (docs/export.md).

Every statement that raises a session's ``cycles`` (a prepaid charge adds ``n``; a postpaid flush or a session's end
writes an absolute total that never goes down) records one event per cycle it adds, in the same transaction, so an
event exists exactly when its cycle is charged: a refused charge adds nothing, a rolled-back one leaves no event.
The id ``"<session_id>:<cycle>"`` is deterministic, so a re-send carries the same id and the sink de-duplicates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sttgate.core.money import format_usd

# The CloudEvents ``type`` of a charged cycle.
CYCLE_EVENT_TYPE = "sttgate.cycle"


class SinkType(Enum):
    """The kinds of ``[[export]]`` sink (docs/export.md)."""

    CLOUDEVENTS = "cloudevents"
    STRIPE = "stripe"


class StripeValue(Enum):
    """What a Stripe meter event's ``payload[value]`` counts (docs/export.md#stripe)."""

    SECONDS = "seconds"  # the cycle's seconds of usage (5): price them in Stripe
    NANOS = "nanos"  # the cycle's price in nano-dollars: the gateway's price book decides the amount


def event_id(session_id: str, cycle: int) -> str:
    """The usage event of ``cycle`` (1-based) of ``session_id``."""
    return f"{session_id}:{cycle}"


def added_cycles(before: int, after: int) -> range:
    """The cycles a statement adds when it takes a session's count from ``before`` to ``after`` (none if it does not
    rise: ledger totals are written as ``max(stored, new)``)."""
    return range(before + 1, max(before, after) + 1)


@dataclass(frozen=True)
class UsageEvent:
    """One charged cycle as the sinks see it. ``subject`` is the account's ``external_id``, else its id, resolved when
    the event is sent (so an account linked to a customer later is exported under that customer)."""

    id: str
    seq: int
    account_id: str
    external_id: str | None
    api_key_id: str | None
    session_id: str
    cycle: int
    provider: str
    model: str | None
    basis: str | None
    seconds: int
    price_nanos: int
    charged_at: datetime

    @property
    def subject(self) -> str:
        return self.external_id or self.account_id

    def data(self) -> dict[str, object]:
        """The CloudEvents ``data`` member (docs/export.md#cloudevents)."""
        return {
            "account": self.account_id,
            "key": self.api_key_id,
            "session": self.session_id,
            "cycle": self.cycle,
            "provider": self.provider,
            "model": self.model,
            "basis": self.basis,
            "seconds": self.seconds,
            "price_usd": format_usd(self.price_nanos),
        }

    def stripe_value(self, value: StripeValue) -> int:
        return self.seconds if value is StripeValue.SECONDS else self.price_nanos


@dataclass(frozen=True)
class RetryPolicy:
    """A sink's retry schedule: exponential from ``base`` seconds up to ``cap``, with full jitter so that gateways and
    sinks recovering together do not retry in step."""

    base: float
    cap: float

    def delay(self, failures: int, rng: random.Random) -> float:
        """The wait after ``failures`` consecutive failures (0: none)."""
        if failures <= 0:
            return 0.0
        ceiling = min(self.cap, self.base * float(2 ** min(failures - 1, 30)))
        return rng.uniform(ceiling / 2, ceiling)
