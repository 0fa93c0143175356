"""Pull task rows: the ``tasks`` and ``webhook_attempts`` tables.

A task's id is its session's id: the ``sessions`` row (opened like any stream, see ``slots.py``) is the stream slot,
the meter and the bill; the ``tasks`` row adds what is specific to pulling (URLs, status, stop flag, last error).
The stop flag is how a stop reaches the gateway that runs the task, whichever gateway received it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, insert, or_, select, update

from sttgate.core.outcomes import ClosedBy, TaskStatus
from sttgate.store.database import Database, utcnow
from sttgate.store.tables import sessions, tasks, webhook_attempts

log = logging.getLogger(__name__)

# The status of a task that has not ended yet (the ways it ends are ``TaskStatus``).
RUNNING = "running"
# last_error of a task whose gateway died; also the claim that its ``ended`` webhook has been taken care of.
CRASHED = "the gateway running the task stopped unexpectedly"
ATTEMPT_FLUSH_SECONDS = 0.5


@dataclass(frozen=True)
class TaskRow:
    """A task with its session's totals (what ``GET …/tasks/{id}`` shows, before redaction and formatting)."""

    id: str
    provider: str
    audio_url: str
    callback_url: str
    status: str
    last_error: str | None
    stop_requested: bool
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    audio_seconds: float
    cycles: int
    cost_nanos: int


@dataclass(frozen=True)
class CrashedTask:
    id: str
    account_id: str
    provider: str
    callback_url: str


class WebhookAttempt(Protocol):
    """One delivery attempt of a webhook, as the deliverer reports it."""

    @property
    def task_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...


class Tasks:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert_task(
        self,
        *,
        task_id: str,
        account_id: str,
        audio_url: str,
        callback_url: str,
        provider: str,
        params: str,
    ) -> None:
        now = utcnow()
        async with self._db.write() as conn:
            await conn.execute(
                insert(tasks).values(
                    id=task_id,
                    account_id=account_id,
                    audio_url=audio_url,
                    callback_url=callback_url,
                    provider=provider,
                    params=params,
                    status=RUNNING,
                    stop_requested=False,
                    created_at=now,
                    started_at=now,
                )
            )

    async def end_task(self, task_id: str, *, status: TaskStatus, last_error: str | None) -> bool:
        """Record the outcome; False when another gateway already ended the task as crashed and sent its ``ended``.

        That happens only when this gateway stalled past its lease: the reaper closed the session, another gateway
        claimed the task (:meth:`claim_crashed`), and this one must then not send a second ``ended``.
        """
        async with self._db.write() as conn:
            result = await conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, or_(tasks.c.last_error.is_(None), tasks.c.last_error != CRASHED))
                .values(status=TaskStatus(status).value, last_error=last_error, ended_at=utcnow())
            )
            return bool(result.rowcount == 1)

    async def claim_crashed(self, *, since: datetime) -> list[CrashedTask]:
        """Tasks whose gateway died (the reaper ended them ``gateway_shutdown`` and their session
        ``gateway_crash``) that still owe their ``ended`` webhook; each is claimed by exactly one gateway."""
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(tasks.c.id, tasks.c.account_id, tasks.c.provider, tasks.c.callback_url)
                    .select_from(tasks.join(sessions, sessions.c.id == tasks.c.id))
                    .where(
                        tasks.c.ended_at >= since,
                        tasks.c.status == TaskStatus.GATEWAY_SHUTDOWN.value,
                        tasks.c.last_error.is_(None),
                        sessions.c.closed_by == ClosedBy.GATEWAY_CRASH.value,
                    )
                )
            ).all()
        claimed = []
        for row in rows:
            async with self._db.write() as conn:
                result = await conn.execute(
                    update(tasks).where(tasks.c.id == row.id, tasks.c.last_error.is_(None)).values(last_error=CRASHED)
                )
            if result.rowcount == 1:
                claimed.append(CrashedTask(row.id, row.account_id, row.provider, row.callback_url))
        return claimed

    async def request_stop(self, task_id: str, account_id: str) -> str | None:
        """Set the stop flag of a running task; the task's status (None: no such task for this account)."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(tasks.c.status, tasks.c.ended_at).where(
                        tasks.c.id == task_id, tasks.c.account_id == account_id
                    )
                )
            ).first()
            if row is None:
                return None
            if row.ended_at is None:
                await conn.execute(update(tasks).where(tasks.c.id == task_id).values(stop_requested=True))
            return str(row.status)

    async def stop_requested(self, task_ids: Sequence[str]) -> list[str]:
        """Which of these tasks have been asked to stop (one query for all of a gateway's tasks)."""
        if not task_ids:
            return []
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                select(tasks.c.id).where(tasks.c.id.in_(list(task_ids)), tasks.c.stop_requested.is_(True))
            )
            return [r.id for r in rows]

    async def get(self, task_id: str, account_id: str) -> TaskRow | None:
        """A task of this account with its session's totals; None for an unknown task or another account's."""
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        tasks.c.id,
                        tasks.c.provider,
                        tasks.c.audio_url,
                        tasks.c.callback_url,
                        tasks.c.status,
                        tasks.c.last_error,
                        tasks.c.stop_requested,
                        tasks.c.created_at,
                        tasks.c.started_at,
                        tasks.c.ended_at,
                        sessions.c.audio_seconds,
                        sessions.c.cycles,
                        sessions.c.cost_nanos,
                    )
                    .select_from(tasks.join(sessions, sessions.c.id == tasks.c.id))
                    .where(and_(tasks.c.id == task_id, tasks.c.account_id == account_id))
                )
            ).first()
        if row is None:
            return None
        return TaskRow(
            id=row.id,
            provider=row.provider,
            audio_url=row.audio_url,
            callback_url=row.callback_url,
            status=row.status,
            last_error=row.last_error,
            stop_requested=bool(row.stop_requested),
            created_at=row.created_at,
            started_at=row.started_at,
            ended_at=row.ended_at,
            audio_seconds=float(row.audio_seconds),
            cycles=int(row.cycles),
            cost_nanos=int(row.cost_nanos),
        )

    async def last_seq(self, task_id: str) -> int:
        """The highest webhook ``seq`` attempted for a task (0 if none): where a crashed gateway's sequence stopped."""
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(select(webhook_attempts.c.seq).where(webhook_attempts.c.task_id == task_id))
            return max((int(r.seq) for r in rows), default=0)

    async def insert_attempts(self, batch: list[dict[str, Any]]) -> None:
        async with self._db.write() as conn:
            await conn.execute(insert(webhook_attempts), batch)

    async def attempts_of(self, task_id: str) -> list[dict[str, Any]]:
        """Every recorded attempt of a task, in order, as column → value (tests and operators)."""
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                select(webhook_attempts).where(webhook_attempts.c.task_id == task_id).order_by(webhook_attempts.c.id)
            )
            return [dict(r._mapping) for r in rows]


class AttemptLog:
    """Webhook attempts written in batches (one insert every ``ATTEMPT_FLUSH_SECONDS``), never on the audio path."""

    def __init__(self, tasks: Tasks, flush_seconds: float = ATTEMPT_FLUSH_SECONDS) -> None:
        self.tasks = tasks
        self.flush_seconds = flush_seconds
        self._pending: list[dict[str, Any]] = []
        self._loop: asyncio.Task[None] | None = None

    async def record(self, attempt: WebhookAttempt) -> None:
        self._pending.append(
            {
                "task_id": attempt.task_id,
                "seq": attempt.seq,
                "attempt": attempt.attempt,
                "status_code": attempt.status_code,
                "error": attempt.error,
                "at": utcnow(),
            }
        )

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception:
                log.exception("event=background_error task=webhook_attempts")

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            await self.tasks.insert_attempts(batch)

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.flush()
