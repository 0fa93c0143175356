"""Group commit: one writer takes every item queued while its previous write ran, and writes them as one batch.

An idle process adds no delay (the first item is written at once, alone) unless asked to gather items for a moment
first; a busy one writes one batch per write's duration instead of one write per item, so the database cost per item
falls as the load rises. Each submitter waits for its own item's outcome, so "written" still means written when
``submit`` returns, with the item's result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The batch writer: one outcome per item, in order (the item's result, or an exception: that item's failure).
BatchWrite = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A submitter cancelled while its batch was written never reads the outcome: do not let asyncio log it."""
    if not future.cancelled():
        future.exception()


class GroupCommit(Generic[T, R]):
    """Batches the items submitted concurrently into calls of ``write``, one call at a time."""

    def __init__(self, write: BatchWrite[T, R], gather_seconds: float = 0.0) -> None:
        """``gather_seconds``: how long an idle writer waits for company before its first write (0: none). For
        writes nobody waits on soon (a prepaid session's next hold is due in 5 s), fewer, larger transactions."""
        self._write = write
        self._gather = gather_seconds
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is queued by the time the writer is free; returns its result, or raises
        its failure (a failure of the whole batch is every item's). Cancelling the caller does not take the item out
        of its batch."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(future)

    async def idle(self) -> None:
        """Return once nothing is queued or being written (a batch still gathering is written first): at shutdown,
        before what depends on those writes."""
        while self._writer is not None:
            await asyncio.wait({self._writer})

    async def _drain(self) -> None:
        try:
            if self._gather:
                await asyncio.sleep(self._gather)
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    outcomes = await self._write([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                    continue
                except BaseException:  # the writer was cancelled (shutdown): so is every item not written
                    for _, future in batch + self._queue:
                        future.cancel()
                    self._queue = []
                    raise
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._writer = None
