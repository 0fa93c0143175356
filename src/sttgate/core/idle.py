"""The idle rule and the session time limit (docs/contract.md#idle-and-time-limit).

Idle: a session whose client sent no metered audio for ``limit`` seconds is closed (1008 "idle timeout"). Only audio
that advanced the meter counts: control messages (AssemblyAI ``KeepAlive``, an ElevenLabs chunk without audio) and
provider messages do not, so a session cannot be kept open for hours for the price of nothing. Activity is read from
the meter's total when the periodic sweep looks (the frame path stores no timestamps); the clock value is passed in,
so the rule is testable without waiting.

Time limit: a session is closed (1008 "session time limit") once it has been open for the operator's
``max_session_seconds``, or for the cap of the token that opened it when that is lower.
"""

from __future__ import annotations


class IdleWatch:
    """Marks the last time the session's metered audio was seen to grow."""

    __slots__ = ("_audio", "_since", "limit")

    def __init__(self, limit: float, now: float) -> None:
        self.limit = limit
        self._audio: float = 0
        self._since = now

    def idle(self, audio: float, now: float) -> bool:
        """Whether the session is idle at ``now``: its metered audio so far (in any unit: only a change matters)
        unchanged for ``limit`` seconds; a change is activity and restarts the clock."""
        if audio != self._audio:
            self._audio = audio
            self._since = now
            return False
        return now - self._since >= self.limit


def session_time_limit(max_session_seconds: float, token_cap: int | None) -> float:
    """How long a session may stay open: the operator's limit, lowered by the cap of the token that opened it."""
    return max_session_seconds if token_cap is None else min(max_session_seconds, token_cap)
