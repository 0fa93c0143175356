"""The usage window: how ``since`` and ``until`` are read, once, for ``sttgate usage`` and ``GET /api/v2/usage``.

docs/contract.md#usage: ISO 8601; a date alone means that whole UTC day (``since=D`` from D 00:00, ``until=D``
through the end of D, i.e. before D+1 00:00); a time without an offset is UTC. Pure: no clock, no I/O.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


class InvalidWindow(ValueError):
    """A ``since``/``until`` that cannot be read, or a window that ends before it starts; the message is one line
    meant for the person who typed it (the CLI prints it, the API answers it as 400 ``invalid_request``)."""


def moment(text: str, *, end: bool) -> datetime:
    """One bound as a UTC instant: a date alone is its 00:00, or for the end bound (``end``) the next day's 00:00,
    so that ``[since, until)`` covers the whole of an ``until`` day."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        try:
            return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC)
        except OverflowError:
            raise InvalidWindow(f"{text!r} is past the last date this gateway can represent.") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidWindow(f"{text!r} is not an ISO 8601 date or time.") from None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidWindow(f"{text!r} is outside the range of UTC times.") from None


def window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """The half-open window ``[since, until)`` of session start times; None = unbounded on that side.

    A window that ends at or before its start selects nothing by construction, so it is refused as a mistake.
    """
    start = None if since is None else moment(since, end=False)
    stop = None if until is None else moment(until, end=True)
    if start is not None and stop is not None and start >= stop:
        raise InvalidWindow(f"since ({since}) must be before until ({until}).")
    return start, stop
