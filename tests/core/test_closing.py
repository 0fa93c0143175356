"""Every row of the close table (sttgate.core.closing): what is recorded, what each side is told."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttgate.core import closecodes
from sttgate.core.closecodes import Close
from sttgate.core.closing import ABANDONED, WIND_DOWN, Decision, decide, provider_ended
from sttgate.core.outcomes import ClosedBy, Outcome
from sttgate.core.session import CloseRecord

UNSENDABLE = [1005, 1006, 1015]


def test_client_close_is_passed_through():
    d = decide(Outcome.CLIENT_CLOSE, 1000, "bye")
    assert d == Decision(
        CloseRecord(1000, "bye", ClosedBy.CLIENT), Close(1000, "bye"), Close(1000, "bye"), graceful=True
    )
    assert decide(Outcome.CLIENT_CLOSE, 4000, "app").to_upstream == (4000, "app")


@pytest.mark.parametrize("code", UNSENDABLE)
def test_client_close_with_an_unsendable_code_becomes_1001_upstream(code):
    d = decide(Outcome.CLIENT_CLOSE, code, "")
    assert d.record == CloseRecord(code, "", ClosedBy.CLIENT)
    assert d.to_upstream == closecodes.CLIENT_GONE == (1001, "client disconnected")
    assert d.to_client == (1000, "")  # completes the client's handshake


def test_client_lost():
    d = decide(Outcome.CLIENT_LOST, 1006)
    assert d == Decision(
        CloseRecord(1006, "", ClosedBy.CLIENT), Close(1001, "client disconnected"), None, graceful=True
    )


def test_client_frame_too_big_is_1009_to_the_client_and_1001_upstream():
    d = decide(Outcome.CLIENT_ERROR, 1009)
    assert d.record == CloseRecord(1009, "message too big", ClosedBy.GATEWAY)
    assert (d.to_upstream, d.to_client) == ((1001, "client disconnected"), (1009, "message too big"))
    assert d.graceful


def test_upstream_close_is_passed_through():
    d = decide(Outcome.UPSTREAM_CLOSE, 3005, "cancelled")
    assert d == Decision(
        CloseRecord(3005, "cancelled", ClosedBy.UPSTREAM), Close(3005, "cancelled"), Close(3005, "cancelled")
    )
    assert not d.graceful  # the provider ended its session itself


@pytest.mark.parametrize("code", UNSENDABLE)
def test_upstream_close_with_an_unsendable_code_becomes_1014_to_the_client(code):
    d = decide(Outcome.UPSTREAM_CLOSE, code, "")
    assert d.record == CloseRecord(1014, "upstream connection lost", ClosedBy.UPSTREAM)
    assert d.to_client == closecodes.UPSTREAM_LOST
    assert d.to_upstream == (1000, "")


def test_upstream_lost_and_upstream_error():
    assert decide(Outcome.UPSTREAM_LOST, 1006) == Decision(
        CloseRecord(1014, "upstream connection lost", ClosedBy.UPSTREAM), None, Close(1014, "upstream connection lost")
    )
    assert decide(Outcome.UPSTREAM_ERROR, 1009) == Decision(
        CloseRecord(1009, "message too big", ClosedBy.GATEWAY), None, Close(1009, "message too big")
    )


@pytest.mark.parametrize("close", [closecodes.INSUFFICIENT_BALANCE, closecodes.BILLING_UNAVAILABLE])
def test_cut_off_ends_the_provider_gracefully_and_tells_the_client(close):
    d = decide(Outcome.CUT_OFF, *close)
    assert d.graceful and d.to_upstream is None and d.to_client == close
    assert d.record == CloseRecord(close.code, close.reason, ClosedBy.GATEWAY)
    assert closecodes.INSUFFICIENT_BALANCE == (4002, "insufficient balance")
    assert closecodes.BILLING_UNAVAILABLE == (1011, "billing unavailable")


def test_unmeterable_audio_ends_the_provider_gracefully_and_tells_the_client():
    close = closecodes.UNMETERABLE_AUDIO
    assert close == (1008, "unmeterable audio")
    d = decide(Outcome.UNMETERABLE, *close)
    assert d.graceful and d.to_upstream is None and d.to_client == close
    assert d.record == CloseRecord(1008, "unmeterable audio", ClosedBy.GATEWAY)


@pytest.mark.parametrize("close", [closecodes.IDLE_TIMEOUT, closecodes.SESSION_TIME_LIMIT, closecodes.SERVICE_RESTART])
def test_gateway_closes_end_the_provider_gracefully_and_tell_both_sides(close):
    d = decide(Outcome.GATEWAY, *close)
    assert d == Decision(CloseRecord(close.code, close.reason, ClosedBy.GATEWAY), close, close, graceful=True)
    assert closecodes.IDLE_TIMEOUT == (1008, "idle timeout") and closecodes.SERVICE_RESTART == (1012, "service restart")
    assert closecodes.SESSION_TIME_LIMIT == (1008, "session time limit")


@given(st.sampled_from(list(Outcome)), st.integers(0, 5000), st.text(max_size=50))
def test_every_row_that_closes_the_provider_hop_is_graceful(outcome, code, reason):
    """Only the provider's own close (or loss) is not ended gracefully: every other row closes the provider hop after
    the provider's end message (docs/contract.md#graceful-provider-end)."""
    d = decide(outcome, code, reason)
    provider_ended_it = outcome in (Outcome.UPSTREAM_CLOSE, Outcome.UPSTREAM_LOST, Outcome.UPSTREAM_ERROR)
    assert d.graceful is not provider_ended_it


def test_a_session_ended_with_nothing_decided_still_ends_the_provider_gracefully():
    assert (
        Decision(CloseRecord(None, "", ClosedBy.GATEWAY), Close(1001, "client disconnected"), None, graceful=True)
        == ABANDONED
    )


def test_wind_down():
    assert not WIND_DOWN.graceful  # no time is left for it
    assert (
        Decision(
            CloseRecord(1011, "internal error", ClosedBy.GATEWAY),
            Close(1001, "client disconnected"),
            Close(1011, "internal error"),
        )
        == WIND_DOWN
    )


def test_every_outcome_has_a_row():
    for outcome in Outcome:
        assert isinstance(decide(outcome, 1000, ""), Decision)


def test_provider_ended_keeps_the_provider_reason():
    assert provider_ended(3005, "cancelled") == (CloseRecord(3005, "cancelled", ClosedBy.UPSTREAM), (3005, "cancelled"))
    assert provider_ended(1005, "") == (CloseRecord(1014, "", ClosedBy.UPSTREAM), (1000, ""))
    assert provider_ended(None, "") == (CloseRecord(1014, "upstream connection lost", ClosedBy.UPSTREAM), None)


@given(st.integers(0, 5000), st.text(max_size=200))
def test_whatever_a_peer_sends_the_other_side_gets_a_sendable_code(code, reason):
    for outcome in (Outcome.CLIENT_CLOSE, Outcome.UPSTREAM_CLOSE):
        d = decide(outcome, code, reason)
        for close in (d.to_upstream, d.to_client):
            assert close is not None and closecodes.may_send(close.code)
    assert len(decide(Outcome.UPSTREAM_CLOSE, code, reason).to_client.reason.encode()) <= 123
    assert len(decide(Outcome.CLIENT_CLOSE, code, reason).to_upstream.reason.encode()) <= 123


def test_closed_by_values_are_the_stored_strings():
    assert [c.value for c in ClosedBy] == ["client", "upstream", "gateway", "gateway_crash"]
    assert ClosedBy.CLIENT == "client"
