"""The session state machine (sttgate.core.session) and the idle rule (sttgate.core.idle)."""

from __future__ import annotations

from sttgate.core.idle import IdleWatch
from sttgate.core.outcomes import ClosedBy
from sttgate.core.session import CloseRecord, Session, State


def test_the_first_outcome_wins():
    s = Session()
    assert s.record(1000, "bye", ClosedBy.CLIENT)
    assert not s.record(1011, "internal error", ClosedBy.GATEWAY)
    assert not s.keep(CloseRecord(1014, "", ClosedBy.UPSTREAM))
    assert s.closed == CloseRecord(1000, "bye", ClosedBy.CLIENT)


def test_graceful_end_is_started_once_and_closing_is_idempotent():
    s = Session()
    assert s.state is State.OPEN and not s.ending
    assert s.begin_end() and s.ending
    assert not s.begin_end()
    assert s.close() and s.state is State.CLOSED
    assert not s.close() and not s.begin_end()


def test_a_closed_session_sends_no_end_frames():
    s = Session()
    s.close()
    assert not s.begin_end()


def test_end_reached_waits_for_the_close_or_for_the_ack():
    s = Session()
    s.begin_end()
    assert not s.end_reached(closes_after_end=False)
    s.acknowledge_end()
    assert s.end_reached(closes_after_end=False)
    assert not s.end_reached(closes_after_end=True)  # AssemblyAI: its close, not its last transcript, ends it
    s.upstream_ended()
    assert s.end_reached(closes_after_end=True)


def test_only_the_first_message_is_inspected():
    s = Session()
    assert s.first_message()
    assert not s.first_message()


def test_idle_after_the_limit_without_frames():
    watch = IdleWatch(30.0, now=100.0)
    assert not watch.idle(0, 0, 129.9)
    assert watch.idle(0, 0, 130.0)


def test_any_frame_either_way_is_activity():
    watch = IdleWatch(30.0, now=0.0)
    assert not watch.idle(1, 0, 29.0)  # a frame up: the clock restarts at 29
    assert not watch.idle(1, 0, 58.0)
    assert not watch.idle(1, 1, 58.5)  # a frame down
    assert not watch.idle(1, 1, 88.0)
    assert watch.idle(1, 1, 88.5)
