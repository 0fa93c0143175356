"""The session state machine (sttgate.core.session) and the idle rule (sttgate.core.idle)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.idle import IdleWatch, session_time_limit
from sttgate.core.outcomes import ClosedBy
from sttgate.core.session import CloseRecord, Reader, Session, State


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


def test_the_gateway_sends_the_end_message_unless_the_client_did():
    s = Session()
    assert s.begin_end() and s.end_frames_due
    s = Session()
    assert s.begin_end(client_sent_end=True, closes_after_end=True) and s.ending and not s.end_frames_due
    assert not s.end_reached(closes_after_end=True)  # AssemblyAI: its close after the client's Terminate is awaited
    s = Session()
    assert s.begin_end(client_sent_end=True, closes_after_end=False) and not s.end_frames_due
    assert s.end_reached(closes_after_end=False)  # ElevenLabs: the answer to the client's commit may have passed


def test_a_reader_that_stops_hands_the_reading_to_the_graceful_end():
    s = Session()
    s.detach_reader()
    assert s.reader is Reader.NONE  # nobody was attached: nothing changes
    s.attach_reader()
    s.detach_reader()
    assert s.reader is Reader.DETACHED


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


def test_idle_after_the_limit_without_audio():
    watch = IdleWatch(30.0, now=100.0)
    assert not watch.idle(0, 129.9)
    assert watch.idle(0, 130.0)


def test_only_metered_audio_is_activity():
    watch = IdleWatch(30.0, now=0.0)
    assert not watch.idle(0.1, 29.0)  # audio was metered: the clock restarts at 29
    assert not watch.idle(0.1, 58.0)  # control messages, provider messages: the meter did not move
    assert watch.idle(0.1, 59.0)
    assert not watch.idle(0.2, 60.0)
    assert watch.idle(0.2, 90.0)


@given(st.lists(st.tuples(st.booleans(), st.floats(0.01, 50.0)), max_size=30))
def test_idle_fires_exactly_when_the_meter_stood_still_for_the_limit(steps):
    """A sweep at every step; audio grows or not: idle iff the last growth (or the start) is ``limit`` ago."""
    limit = 30.0
    watch = IdleWatch(limit, now=0.0)
    audio, now, since = 0.0, 0.0, 0.0
    for grows, delay in steps:
        now += delay
        if grows:
            audio += 0.05
            since = now
        assert watch.idle(audio, now) == (now - since >= limit)


def test_the_session_time_limit_is_the_gateways_lowered_by_the_token():
    assert session_time_limit(10800.0, None) == 10800.0
    assert session_time_limit(10800.0, 300) == 300
    assert session_time_limit(60.0, 300) == 60.0  # a token cannot extend the operator's limit
