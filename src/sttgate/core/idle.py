"""The idle rule: a session that moved no frame either way for ``limit`` seconds is closed (1008 "idle timeout").

Activity is read from the session's frame counters when the periodic sweep looks (the frame path stores no
timestamps); the clock value is passed in, so the rule is testable without waiting.
"""

from __future__ import annotations


class IdleWatch:
    """Marks the last time the frame counters were seen to move."""

    __slots__ = ("_frames", "_since", "limit")

    def __init__(self, limit: float, now: float) -> None:
        self.limit = limit
        self._frames = (0, 0)
        self._since = now

    def idle(self, frames_up: int, frames_down: int, now: float) -> bool:
        """Whether the session is idle at ``now`` (the counters unchanged for ``limit`` seconds); a change is activity
        and restarts the clock."""
        frames = (frames_up, frames_down)
        if frames != self._frames:
            self._frames = frames
            self._since = now
            return False
        return now - self._since >= self.limit
