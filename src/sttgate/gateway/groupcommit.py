"""Group commit: one writer takes every item queued while its previous write ran, and writes them as one batch.

An idle process adds no delay (the first item is written at once, alone); a busy one writes one batch per write's
duration instead of one write per item, so the database cost per item falls as the load rises. Each submitter waits
for its own item's outcome, so "written" still means written when ``submit`` returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# The batch writer: one outcome per item, in order (None: written; an exception: that item's failure).
BatchWrite = Callable[[list[T]], Awaitable[Sequence[BaseException | None]]]


def _retrieved(future: asyncio.Future[None]) -> None:
    """A submitter cancelled while its batch was written never reads the outcome: do not let asyncio log it."""
    if not future.cancelled():
        future.exception()


class GroupCommit(Generic[T]):
    """Batches the items submitted concurrently into calls of ``write``, one call at a time."""

    def __init__(self, write: BatchWrite[T]) -> None:
        self._write = write
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Write ``item`` with whatever else is queued by the time the writer is free; raises the item's failure (a
        failure of the whole batch is every item's). Cancelling the caller does not take the item out of its batch."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
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
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)
        finally:
            self._writer = None
