"""How account changes bind live sessions (docs/billing.md#account-changes), pure."""

from __future__ import annotations

import pytest

from sttgate.core import closecodes
from sttgate.core.accounts import AccountState, Binding, bind
from sttgate.core.billing import Action, Billing
from sttgate.core.metering import AudioFormat, BinaryMeter

SECOND = bytes(32000)  # 1 s of 16 kHz s16le


@pytest.mark.parametrize(
    ("state", "binding"),
    [
        (AccountState(streaming_enabled=True, prepaid=False), Binding(prepaid=False, close=None)),
        (AccountState(streaming_enabled=True, prepaid=True), Binding(prepaid=True, close=None)),
        (AccountState(streaming_enabled=False, prepaid=True), Binding(True, closecodes.STREAMING_DISABLED)),
        (AccountState(streaming_enabled=False, prepaid=False), Binding(False, closecodes.STREAMING_DISABLED)),
    ],
)
def test_bind(state: AccountState, binding: Binding) -> None:
    assert bind(state) == binding
    assert closecodes.STREAMING_DISABLED == (1008, "streaming disabled")


def test_a_postpaid_session_switched_to_prepaid_charges_from_its_next_cycle() -> None:
    meter = BinaryMeter(AudioFormat(2, 16000))
    billing = Billing(meter, prepaid=False, price_nanos=100)
    assert billing.opened(meter.binary(SECOND)) is Action.FORWARD  # cycle 1 accrues
    for _ in range(4):
        assert meter.binary(SECOND) == 0
    billing.rebill(prepaid=True)
    opened = meter.binary(SECOND)  # the 6th second opens cycle 2
    assert opened == 1 and billing.opened(opened) is Action.CHARGE
    assert billing.settled(paid=False) is Action.CUT_OFF  # a balance of 0 cannot pay it: 4002
    assert (billing.cycles, billing.cost_nanos, meter.audio_seconds) == (1, 100, 5.0)


def test_a_prepaid_session_switched_to_postpaid_accrues_from_its_next_cycle() -> None:
    meter = BinaryMeter(AudioFormat(2, 16000))
    billing = Billing(meter, prepaid=True, price_nanos=100)
    assert billing.opened(meter.binary(SECOND)) is Action.CHARGE
    assert billing.settled(paid=True) is Action.FORWARD
    billing.rebill(prepaid=False)
    for _ in range(4):
        meter.binary(SECOND)
    assert billing.opened(meter.binary(SECOND)) is Action.FORWARD
    assert billing.cycles == 2
