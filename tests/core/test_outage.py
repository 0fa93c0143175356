"""The database-outage rules (sttgate.core.outage): retry backoff, the bounded pending ends, what /readyz says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.outage import Backoff, PendingEnd, PendingEnds, Readiness, WriteHealth, readiness
from sttgate.core.outcomes import ClosedBy


def end(session_id: str, cycles: int = 1) -> PendingEnd:
    return PendingEnd(session_id, 5.0 * cycles, cycles, cycles * 208_333, 1000, "", ClosedBy.CLIENT)


def test_backoff_doubles_from_base_up_to_cap():
    b = Backoff(base=0.5, cap=10.0)
    assert [b.delay(n) for n in range(8)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@given(st.integers(min_value=1, max_value=10_000))
def test_backoff_is_never_above_cap_and_never_shrinks(failures):
    b = Backoff()
    assert 0 < b.delay(failures) <= b.cap
    assert b.delay(failures + 1) >= b.delay(failures)


def test_pending_ends_keep_order_replace_and_forget_written():
    p = PendingEnds(limit=3)
    assert p.add(end("a")) is None and p.add(end("b")) is None
    assert p.add(end("a", cycles=2)) is None  # the later end of a session replaces the earlier one
    assert p.ids() == ["b", "a"] and [e.cycles for e in p] == [1, 2]
    p.written("b")
    p.written("unknown")
    assert p.ids() == ["a"] and len(p) == 1


def test_pending_ends_are_bounded_and_give_up_the_oldest():
    p = PendingEnds(limit=2)
    p.add(end("a"))
    p.add(end("b"))
    given_up = p.add(end("c"))
    assert given_up == end("a")
    assert p.ids() == ["b", "c"]
    with pytest.raises(ValueError):
        PendingEnds(limit=0)


def test_write_health_is_unwritable_after_a_failure_until_a_success_or_the_window_passes():
    h = WriteHealth(window=10.0)
    assert h.writable(0.0) and not h.seen_within(0.0)
    h.failed(1.0)
    assert not h.writable(1.0) and not h.writable(10.9) and h.seen_within(5.0)
    assert h.writable(11.0)  # nothing failed for a whole window
    h.succeeded(3.0)
    assert h.writable(3.0)
    h.failed(4.0)
    assert not h.writable(4.5)
    assert not h.seen_within(14.5)  # nothing seen in the window: a probe must tell


def test_readiness():
    assert readiness(draining=False, writable=True) is Readiness.READY
    assert readiness(draining=True, writable=True) is Readiness.DRAINING
    assert readiness(draining=True, writable=False) is Readiness.DRAINING
    assert readiness(draining=False, writable=False) is Readiness.DATABASE_UNAVAILABLE
    assert Readiness.DATABASE_UNAVAILABLE.value == "database_unavailable"
