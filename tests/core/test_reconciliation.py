"""The reconciliation rule (docs/billing.md#reconciliation), pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.reconciliation import TOLERANCE_SECONDS, audio_mismatch


def test_nothing_reported_is_never_a_mismatch() -> None:
    assert not audio_mismatch(12.0, None)


def test_whole_second_rounding_is_not_a_mismatch_but_more_than_a_second_is() -> None:
    assert not audio_mismatch(12.4, 12.0) and not audio_mismatch(11.6, 12.0)
    assert not audio_mismatch(13.0, 12.0)  # exactly the tolerance
    assert audio_mismatch(13.01, 12.0) and audio_mismatch(10.9, 12.0)


@given(st.floats(0, 1e6), st.floats(0, 1e6))
def test_symmetric_and_exactly_the_tolerance(a: float, b: float) -> None:
    assert audio_mismatch(a, b) == audio_mismatch(b, a) == (abs(a - b) > TOLERANCE_SECONDS)
