"""Reconciliation with what providers report (docs/billing.md#reconciliation): pure rules, no I/O.

Where a provider reports its own figures at the end of a session (AssemblyAI ``Termination``, Deepgram
``Metadata.duration``), the gateway records them beside its own and counts the sessions whose audio differs by more
than :data:`TOLERANCE_SECONDS`. AssemblyAI reports whole seconds, so a difference of up to 0.5 s is rounding alone;
beyond 1 s the meter and the provider disagree about what was sent, which an operator should look at.
"""

from __future__ import annotations

TOLERANCE_SECONDS = 1.0


def audio_mismatch(gateway_audio_seconds: float, provider_audio_seconds: float | None) -> bool:
    """Whether the provider's audio figure differs from the gateway's by more than the tolerance (``None``: the
    provider reported nothing, so there is nothing to compare)."""
    if provider_audio_seconds is None:
        return False
    return abs(provider_audio_seconds - gateway_audio_seconds) > TOLERANCE_SECONDS
