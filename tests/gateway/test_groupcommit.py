"""Group commit (gateway/groupcommit.py): what each submitter sees, and how items are batched."""

from __future__ import annotations

import asyncio

import pytest

from sttgate.gateway.groupcommit import GroupCommit


class Writer:
    """A batch writer that holds each write until released, and fails the items it is told to."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.failing: set[str] = set()
        self.broken: Exception | None = None

    async def write(self, items: list[str]) -> list[BaseException | None]:
        self.batches.append(items)
        self.started.set()
        await self.release.wait()
        if self.broken is not None:
            raise self.broken
        return [LookupError(item) if item in self.failing else None for item in items]


async def test_an_idle_writer_writes_at_once_and_a_busy_one_takes_everything_queued_meanwhile() -> None:
    writer = Writer()
    commit = GroupCommit(writer.write)
    first = asyncio.ensure_future(commit.submit("a"))
    await writer.started.wait()
    assert writer.batches == [["a"]]  # alone, without waiting for company
    rest = [asyncio.ensure_future(commit.submit(x)) for x in ("b", "c", "d")]
    await asyncio.sleep(0)  # the three are queued behind the write under way
    assert writer.batches == [["a"]] and not first.done()
    writer.release.set()
    await asyncio.gather(first, *rest)
    assert writer.batches == [["a"], ["b", "c", "d"]]
    await commit.submit("e")  # idle again: a batch of its own
    assert writer.batches[-1] == ["e"]


async def test_each_submitter_gets_its_own_outcome_and_a_failed_batch_fails_all_of_its_items() -> None:
    writer = Writer()
    writer.release.set()
    writer.failing = {"bad"}
    commit = GroupCommit(writer.write)
    results = await asyncio.gather(commit.submit("good"), commit.submit("bad"), return_exceptions=True)
    assert results[0] is None and isinstance(results[1], LookupError)
    writer.broken = OSError("database unavailable")
    results = await asyncio.gather(commit.submit("x"), commit.submit("y"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    writer.broken = None
    await commit.submit("z")  # the writer carries on after a failed batch
    assert writer.batches[-1] == ["z"]


async def test_a_cancelled_submitter_leaves_its_item_in_the_batch() -> None:
    writer = Writer()
    commit = GroupCommit(writer.write)
    submitted = asyncio.ensure_future(commit.submit("a"))
    await writer.started.wait()
    submitted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitted
    writer.release.set()
    await commit.submit("b")
    assert writer.batches == [["a"], ["b"]]


async def test_each_submitter_gets_its_own_result() -> None:
    async def write(items: list[str]) -> list[str | BaseException]:
        return [item.upper() for item in items]

    commit: GroupCommit[str, str] = GroupCommit(write)
    assert await asyncio.gather(*(commit.submit(x) for x in "abc")) == ["A", "B", "C"]


async def test_a_gathering_writer_waits_for_company_before_its_first_write() -> None:
    writer = Writer()
    writer.release.set()
    commit: GroupCommit[str, None] = GroupCommit(writer.write, gather_seconds=0.05)
    first = asyncio.ensure_future(commit.submit("a"))
    await asyncio.sleep(0)
    assert writer.batches == [] and not first.done()  # gathering: nothing written yet
    await asyncio.gather(first, commit.submit("b"), commit.submit("c"))
    assert writer.batches == [["a", "b", "c"]]  # one write for the three


async def test_idle_returns_once_what_was_queued_is_written() -> None:
    writer = Writer()
    commit: GroupCommit[str, None] = GroupCommit(writer.write, gather_seconds=0.05)
    submitted = asyncio.ensure_future(commit.submit("a"))
    await asyncio.sleep(0)
    idle = asyncio.ensure_future(commit.idle())
    writer.release.set()
    await idle
    assert writer.batches == [["a"]]  # the gathering batch was written before idle() returned
    await submitted
    await commit.idle()  # nothing queued: at once
