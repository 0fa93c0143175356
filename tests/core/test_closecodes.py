import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sttgate.core.closecodes import (
    CLIENT_GONE,
    IDLE_TIMEOUT,
    INSUFFICIENT_BALANCE,
    MESSAGE_TOO_BIG,
    SERVICE_RESTART,
    UPSTREAM_LOST,
    Close,
    clip_reason,
    may_send,
    to_client,
    to_upstream,
)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_sendable(code: int) -> None:
    assert may_send(code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, -1])
def test_not_sendable(code: int) -> None:
    assert not may_send(code)


def test_gateway_codes() -> None:
    assert INSUFFICIENT_BALANCE == (4002, "insufficient balance")
    assert SERVICE_RESTART == (1012, "service restart")
    assert UPSTREAM_LOST == (1014, "upstream connection lost")
    assert MESSAGE_TOO_BIG == (1009, "message too big")
    assert IDLE_TIMEOUT == (1008, "idle timeout")
    assert all(may_send(c.code) for c in (INSUFFICIENT_BALANCE, SERVICE_RESTART, UPSTREAM_LOST, MESSAGE_TOO_BIG))


def test_verbatim_both_ways() -> None:
    assert to_client(1000, "Session Ended") == Close(1000, "Session Ended")
    assert to_client(3007, "Input duration violation") == (3007, "Input duration violation")
    assert to_upstream(1000, "User ended conversation") == (1000, "User ended conversation")
    assert to_upstream(4321, "") == (4321, "")


@pytest.mark.parametrize("code", [None, 1005, 1006, 1015, 1004, 2000])
def test_substitutions(code: int | None) -> None:
    assert to_client(code, "whatever") == UPSTREAM_LOST == (1014, "upstream connection lost")
    assert to_upstream(code, "whatever") == CLIENT_GONE == (1001, "client disconnected")


def test_long_reason_is_clipped_on_a_character_boundary() -> None:
    reason = "é" * 100  # 200 bytes
    clipped = to_client(1000, reason).reason
    assert clipped == "é" * 61
    assert len(clipped.encode()) <= 123


@settings(deadline=None)
@given(st.text())
def test_clip_reason_always_fits_and_is_a_prefix(reason: str) -> None:
    clipped = clip_reason(reason)
    assert len(clipped.encode()) <= 123
    assert reason.startswith(clipped)
    if len(reason.encode()) <= 123:
        assert clipped == reason


@settings(deadline=None)
@given(st.one_of(st.none(), st.integers(-10, 70_000)), st.text(max_size=20))
def test_whatever_arrives_the_other_side_gets_a_sendable_code(code: int | None, reason: str) -> None:
    assert may_send(to_client(code, reason).code)
    assert may_send(to_upstream(code, reason).code)
