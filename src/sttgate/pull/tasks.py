"""Running pull tasks: FFmpeg → provider session → webhooks, and how each task ends (docs/pull.md#how-a-task-ends).

A :class:`PullTask` drives one :class:`~sttgate.gateway.live.LiveSession` (opened by the start request, so
every refusal of §3 was an HTTP answer). Its feeder sends FFmpeg's 100 ms chunks in the provider's framing; its
reader hands every provider message to the task's :class:`~sttgate.pull.webhooks.WebhookDeliverer`. Whatever
happens first ends the task, and only the first thing counts:

=====================  =====================================================  ============================
status                 cause                                                  provider session closed with
=====================  =====================================================  ============================
``stopped``            the stop endpoint (on any gateway: the DB stop flag)   graceful end, 1000, client
``source_ended``       FFmpeg reached the end of the source and exited 0      graceful end, 1000, client
``source_failed``      FFmpeg failed, or no audio for the source timeout      graceful end, 1000, client
``provider_closed``    the provider closed the session                        its own code, upstream
``insufficient_balance``  a prepaid balance cannot pay the next cycle         graceful end, 4002, gateway
``budget_exceeded``    the account's monthly budget is reached                graceful end, 4002, gateway
``gateway_shutdown``   the gateway stops (drain over, or runner clean-up)     graceful end, 1012, gateway
``source_failed``      the meter cannot read a frame the gateway framed       graceful end, 1008, gateway
                       (docs/billing.md#strict-metering; not expected)
=====================  =====================================================  ============================

"Graceful end" is the provider's own (``Provider.end_frames``: a final commit, a terminate message…), so the final
transcript still reaches the webhook before the ``ended`` event. FFmpeg is stopped first, always, and reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sttgate.core import closecodes
from sttgate.core.closecodes import Close
from sttgate.core.outcomes import ClosedBy, TaskStatus
from sttgate.gateway.live import UnmeterableFrame
from sttgate.gateway.logevents import log_event
from sttgate.pull.ffmpeg import FFmpegSource
from sttgate.pull.webhooks import WebhookDeliverer

if TYPE_CHECKING:
    from sttgate.gateway.live import LiveSession
    from sttgate.store import Store

log = logging.getLogger("sttgate.pull")

READER_WAIT_SECONDS = 5.0

# status -> (close code and reason, closed_by) recorded for the provider session
_SESSION_CLOSE: dict[TaskStatus, tuple[Close, ClosedBy]] = {
    TaskStatus.STOPPED: (Close(1000, "stopped"), ClosedBy.CLIENT),
    TaskStatus.SOURCE_ENDED: (Close(1000, "source ended"), ClosedBy.CLIENT),
    TaskStatus.SOURCE_FAILED: (Close(1000, "source failed"), ClosedBy.CLIENT),
    TaskStatus.INSUFFICIENT_BALANCE: (closecodes.INSUFFICIENT_BALANCE, ClosedBy.GATEWAY),
    TaskStatus.BUDGET_EXCEEDED: (closecodes.BUDGET_EXCEEDED, ClosedBy.GATEWAY),
    TaskStatus.GATEWAY_SHUTDOWN: (closecodes.SERVICE_RESTART, ClosedBy.GATEWAY),
}


@dataclass(frozen=True)
class Ending:
    status: TaskStatus
    reason: str
    error: str | None = None
    # The provider session's close when it is not the status's usual one (``_SESSION_CLOSE``).
    close: tuple[Close, ClosedBy] | None = None


# The meter refused a frame of the gateway's own framing: the task ends rather than send audio it cannot bill.
UNMETERABLE = Ending(
    TaskStatus.SOURCE_FAILED,
    "the gateway could not meter the audio",
    "unmeterable audio",
    (closecodes.UNMETERABLE_AUDIO, ClosedBy.GATEWAY),
)


def ending_for_gateway_close(code: int, reason: str) -> Ending:
    """The gateway asked the session to close (``LiveSession.close_requested``)."""
    if (code, reason) == closecodes.INSUFFICIENT_BALANCE:  # a session-basis cycle the balance cannot pay
        return Ending(TaskStatus.INSUFFICIENT_BALANCE, "the balance cannot pay the next cycle", reason)
    if (code, reason) == closecodes.BUDGET_EXCEEDED:  # a session-basis cycle past the monthly budget
        return Ending(TaskStatus.BUDGET_EXCEEDED, "the account reached its monthly budget", reason)
    if (code, reason) == closecodes.STREAMING_DISABLED:
        return Ending(TaskStatus.STOPPED, "streaming was disabled for the account", reason)
    if (code, reason) == closecodes.CLOSED_BY_OPERATOR:  # docs/admin-api.md#close-a-session
        return Ending(TaskStatus.STOPPED, "an operator closed the session", reason)
    if code == closecodes.IDLE_TIMEOUT.code:
        return Ending(TaskStatus.SOURCE_FAILED, "no audio was sent for the idle timeout", reason)
    return Ending(TaskStatus.GATEWAY_SHUTDOWN, "the gateway is shutting down")


def ending_for_source(status: TaskStatus, error: str | None) -> Ending:
    if status == TaskStatus.SOURCE_ENDED:
        return Ending(TaskStatus.SOURCE_ENDED, "the source ended")
    return Ending(TaskStatus.SOURCE_FAILED, error or "the source failed", error)


class PullTask:
    """One running task; :meth:`run` returns how it ended, after the session, FFmpeg and the DB row are done."""

    def __init__(
        self,
        *,
        task_id: str,
        live: LiveSession,
        source: FFmpegSource,
        deliverer: WebhookDeliverer,
        store: Store,
        on_ended: Callable[[PullTask], None] | None = None,
    ) -> None:
        self.id = task_id
        self.live = live
        self.source = source
        self.deliverer = deliverer
        self.store = store
        self.on_ended = on_ended
        self.ending: Ending | None = None
        self._halt: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self.source_closed = asyncio.Event()

    def halt(self, ending: Ending) -> None:
        """End the task for this reason, unless something else ended it first."""
        if not self._halt.done():
            self._halt.set_result(ending)

    def stop(self) -> None:
        self.halt(Ending(TaskStatus.STOPPED, "stopped by the user"))

    async def run(self) -> Ending:
        live = self.live
        messages = live.messages()
        reader = asyncio.create_task(self._read(messages), name=f"pull-reader-{self.id}")
        reader.add_done_callback(lambda _: self.halt(self._provider_closed()))
        live.close_requested.add_done_callback(self._on_close_requested)
        try:
            try:
                self.halt(await self._feed())
            except Exception as exc:
                log.exception("event=pull_task_error task=%s", self.id)
                failed = Ending(
                    TaskStatus.SOURCE_FAILED, "the gateway failed while feeding the source", f"internal error: {exc}"
                )
                self.halt(failed)
            ending = self._halt.result()
            await self.source.close()
            self.source_closed.set()
            close = ending.close or _SESSION_CLOSE.get(ending.status)
            if close is not None:
                (code, reason), closed_by = close
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await live.finish(code=code, reason=reason, closed_by=closed_by)
            # The final transcript: the reader ends when the provider session does (bounded; never raises here).
            await asyncio.wait({reader}, timeout=READER_WAIT_SECONDS)
        finally:
            await self.source.close()
            self.source_closed.set()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            try:
                await asyncio.shield(live.end())
            except Exception:
                log.exception("event=pull_task_error task=%s step=session_end", self.id)
        self.ending = ending
        recorded = True
        try:
            recorded = await asyncio.shield(
                self.store.tasks.end_task(self.id, status=ending.status, last_error=ending.error)
            )
        except Exception:
            log.exception("event=pull_task_error task=%s step=task_end", self.id)
        finally:
            if recorded:
                self.deliverer.end(ending.status, ending.reason)
            else:
                await self.deliverer.abort()
            log_event(
                "pull_task_end",
                task=self.id,
                status=ending.status,
                audio_seconds=f"{live.audio_seconds:.3f}",
                cycles=live.cycles,
                webhooks_dropped=self.deliverer.dropped,
            )
            if self.on_ended is not None:
                self.on_ended(self)
        return ending

    def _on_close_requested(self, requested: asyncio.Future[tuple[int, str]]) -> None:
        if not requested.cancelled():
            self.halt(ending_for_gateway_close(*requested.result()))

    def _provider_closed(self) -> Ending:
        code, reason = self.live.close_code, self.live.close_reason
        detail = f"code {code}" + (f": {reason}" if reason else "") if code is not None else "connection lost"
        message = f"the provider closed the session ({detail})"
        return Ending(TaskStatus.PROVIDER_CLOSED, message, message)

    async def _read(self, messages: object) -> None:
        async for message in messages:  # type: ignore[attr-defined]
            self.deliverer.message(message if isinstance(message, str) else message.decode("utf-8", "replace"))

    async def _feed(self) -> Ending:
        """Chunks to the provider until the source ends or the task is halted; waiting for a chunk is interruptible,
        sending one (metering, a prepaid charge) is not."""
        provider = self.live.provider
        chunks = self.source.chunks()
        try:
            while True:
                nxt = asyncio.ensure_future(anext(chunks))
                waiting: set[asyncio.Future[Any]] = {nxt, self._halt}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    return self._halt.result()
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    outcome = self.source.outcome
                    assert outcome is not None
                    return ending_for_source(outcome.status, outcome.error)
                if self._halt.done():
                    return self._halt.result()
                try:
                    sent = await self.live.send_audio(provider.audio_frame(provider.pad_pull_frame(chunk)))
                except UnmeterableFrame:
                    return UNMETERABLE
                except (ConnectionError, RuntimeError):
                    return self._provider_closed()
                if not sent:
                    if self.live.billing.over_budget:
                        return Ending(TaskStatus.BUDGET_EXCEEDED, "the account reached its monthly budget")
                    return Ending(TaskStatus.INSUFFICIENT_BALANCE, "the balance cannot pay the next 5-second cycle")
        finally:
            with contextlib.suppress(RuntimeError):
                await chunks.aclose()
