"""The life of one provider session as a state machine: events in, decisions out, no I/O.

``OPEN`` → ``ENDING`` (the provider's end message was sent, by the gateway or already by the client; waiting for its
final transcript or close) →
``CLOSED`` (the outcome is final and written once). The close record is first-outcome-wins: whoever decides first how
the session ended (the client's close, the provider's, a cut-off, a drain) is what the ledger keeps, whatever races
after it. The shell (:mod:`sttgate.gateway.live`) performs the I/O and reports the events here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from sttgate.core.outcomes import ClosedBy


class State(Enum):
    OPEN = auto()
    ENDING = auto()  # end frames sent: the provider owes its final transcript or its close
    CLOSED = auto()  # the outcome is final (written to the ledger once)


class Reader(Enum):
    """Who consumes the provider's messages; ``finish`` must not read a socket someone else reads."""

    NONE = auto()
    ATTACHED = auto()  # the relay, or a ``messages()`` iterator
    DETACHED = auto()  # the attached reader stopped before the provider's end (its client went away): ``finish`` reads
    SELF_DRAINING = auto()  # ``finish`` started before anyone read: it drains (and drops) the messages itself


@dataclass(frozen=True, slots=True)
class CloseRecord:
    """How a session ended: the close code (``None``: none was exchanged), its reason, and who closed."""

    code: int | None
    reason: str
    closed_by: ClosedBy


class Session:
    """State, close record and graceful-end bookkeeping of one session."""

    __slots__ = ("closed", "end_acked", "end_frames_due", "first_seen", "reader", "state", "upstream_done")

    def __init__(self) -> None:
        self.state = State.OPEN
        self.closed: CloseRecord | None = None
        self.reader = Reader.NONE
        self.end_acked = False
        self.upstream_done = False
        self.first_seen = False
        # Whether the gateway sends the provider's end message itself (decided by ``begin_end``).
        self.end_frames_due = False

    def record(self, code: int | None, reason: str, closed_by: ClosedBy) -> bool:
        """Remember how the session ended unless something already decided it; True if this decision counts."""
        if self.closed is not None:
            return False
        self.closed = CloseRecord(code, reason, closed_by)
        return True

    def keep(self, record: CloseRecord) -> bool:
        """:meth:`record` for a ready-made :class:`CloseRecord`."""
        if self.closed is not None:
            return False
        self.closed = record
        return True

    def first_message(self) -> bool:
        """True for the first provider message only (the one that may carry an in-band auth error)."""
        if self.first_seen:
            return False
        self.first_seen = True
        return True

    def begin_end(self, client_sent_end: bool = False, closes_after_end: bool = True) -> bool:
        """The graceful end starts: True if it starts now (only once, only while open).

        The gateway then sends the provider's end message (:attr:`end_frames_due`) unless the client's last message
        already was one: a second one could make the provider answer with an error. The end awaited after a client's
        own end message is the provider's close, for a provider that closes after it; for one that only answers it,
        that answer may already have been relayed, so nothing more is awaited.
        """
        if self.state is not State.OPEN:
            return False
        self.state = State.ENDING
        self.end_frames_due = not client_sent_end
        if client_sent_end and not closes_after_end:
            self.end_acked = True
        return True

    @property
    def ending(self) -> bool:
        return self.state is State.ENDING

    def acknowledge_end(self) -> None:
        """The provider answered the end frames (its final transcript)."""
        self.end_acked = True

    def upstream_ended(self) -> None:
        """The provider's socket delivered its close (or was lost)."""
        self.upstream_done = True

    def end_reached(self, closes_after_end: bool) -> bool:
        """Whether a graceful end is over: the provider's close, or, for providers that stay open after their final
        transcript, its acknowledgement."""
        return self.upstream_done or (not closes_after_end and self.end_acked)

    def attach_reader(self) -> None:
        self.reader = Reader.ATTACHED

    def detach_reader(self) -> None:
        """The attached reader stopped (e.g. the client it relayed to is gone): a graceful end reads for itself."""
        if self.reader is Reader.ATTACHED:
            self.reader = Reader.DETACHED

    def close(self) -> bool:
        """The session is over: True the first time (the shell then writes the outcome), False after."""
        if self.state is State.CLOSED:
            return False
        self.state = State.CLOSED
        return True
