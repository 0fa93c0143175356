"""What the gateway does while its database cannot be written (docs/operations.md#database-outage).

Three pure pieces, each given the clock value instead of reading one:

- :class:`Backoff`: how long to wait before retrying a write that failed;
- :class:`PendingEnds`: the final totals of ended sessions whose end is not written yet, bounded in number (a session
  is money: it is given up only when the bound is reached, and the caller logs what it gave up);
- :class:`WriteHealth` and :func:`readiness`: what ``/readyz`` answers, from the outcome of recent writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sttgate.core.outcomes import ClosedBy


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``base`` seconds after the first failure, doubling up to ``cap``."""

    base: float = 0.5
    cap: float = 10.0

    def delay(self, failures: int) -> float:
        """The wait before the next attempt after ``failures`` consecutive failures (0: retry at once)."""
        if failures <= 0:
            return 0.0
        return min(self.cap, self.base * float(2 ** min(failures - 1, 30)))


@dataclass(frozen=True)
class PendingEnd:
    """A session's last write, kept until it is written: its acceptance (when not written yet), final totals,
    outcome, and the provider's own figures."""

    session_id: str
    audio_seconds: float
    cycles: int
    cost_nanos: int
    close_code: int | None
    close_reason: str | None
    closed_by: ClosedBy
    accepted_at: datetime | None = None  # the session's start, when no ledger tick has written it yet
    provider_audio_seconds: float | None = None
    provider_session_seconds: float | None = None
    has_figures: bool = False


class PendingEnds:
    """Ends waiting to be written, oldest first, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._ends: dict[str, PendingEnd] = {}

    def add(self, end: PendingEnd) -> PendingEnd | None:
        """Keep ``end`` (replacing an earlier end of the same session); returns the oldest end given up when the
        bound is exceeded, for the caller to log with its totals."""
        self._ends.pop(end.session_id, None)
        self._ends[end.session_id] = end
        if len(self._ends) > self.limit:
            oldest = next(iter(self._ends))
            return self._ends.pop(oldest)
        return None

    def written(self, session_id: str) -> None:
        self._ends.pop(session_id, None)

    def ids(self) -> list[str]:
        return list(self._ends)

    def __len__(self) -> int:
        return len(self._ends)

    def __iter__(self) -> Iterator[PendingEnd]:
        return iter(list(self._ends.values()))


class WriteHealth:
    """The outcome of this process's recent database writes: writable unless a write failed within the last
    ``window`` seconds and none has succeeded since."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._failed_at: float | None = None
        self._succeeded_at: float | None = None

    def succeeded(self, now: float) -> None:
        self._succeeded_at = now

    def failed(self, now: float) -> None:
        self._failed_at = now

    def writable(self, now: float) -> bool:
        failed = self._failed_at
        if failed is None or now - failed >= self.window:
            return True
        return self._succeeded_at is not None and self._succeeded_at > failed

    @property
    def last_success(self) -> float | None:
        return self._succeeded_at

    def seen_within(self, now: float) -> bool:
        """Whether any write (failed or not) was seen in the last ``window`` seconds: if not, a probe tells."""
        last = max((t for t in (self._failed_at, self._succeeded_at) if t is not None), default=None)
        return last is not None and now - last < self.window


class Readiness(StrEnum):
    """``/readyz``'s ``status`` (docs/contract.md#health-and-metrics); only READY answers 200."""

    READY = "ready"
    DRAINING = "draining"
    DATABASE_UNAVAILABLE = "database_unavailable"


def readiness(*, draining: bool, writable: bool) -> Readiness:
    """Ready for new sessions: not draining, and the database takes writes (a read that answers is not enough: a
    full disk or a locked SQLite file still answers reads)."""
    if draining:
        return Readiness.DRAINING
    if not writable:
        return Readiness.DATABASE_UNAVAILABLE
    return Readiness.READY
