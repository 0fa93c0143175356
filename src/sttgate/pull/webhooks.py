"""Webhook delivery for pull tasks (docs/pull.md#webhooks): every provider message, in order, signed, retried,
never in the way.

One :class:`WebhookDeliverer` per task. The task's feeder hands it provider messages with :meth:`message`, which
never blocks: messages wait in a bounded queue and one worker posts them in order. A failed post is retried with
exponential backoff; while it is retried, later messages wait behind it, and when the queue is full the oldest
waiting ``message`` is dropped and counted (the gap shows in ``seq``). The final ``ended`` event is never dropped
and is posted exactly once per task, after every message before it.

Every attempt is signed twice under the account's webhook secret: ``X-Sttgate-Signature`` (HMAC-SHA256 of the body,
keyed by the secret's text) and the Standard Webhooks headers ``webhook-id`` (the same on every attempt of one event),
``webhook-timestamp`` (this attempt's time) and ``webhook-signature`` (keyed by the bytes the secret's base64 part
decodes to), so a receiver can refuse replays with any Standard Webhooks library (docs/pull.md#signatures).

The envelope, signatures and backoff arithmetic are plain functions, tested directly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks import Webhook

from sttgate.pull.urlsafety import address_allowed

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sttgate-Signature"
SECRET_PREFIX = "whsec_"
USER_AGENT = "sttgate-webhooks/1"
EVENT_MESSAGE = "message"
EVENT_ENDED = "ended"
# A receiver answering these is asked again; any other non-2xx status is a final answer for that event.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def sign(secret: str | bytes, body: bytes) -> str:
    """``X-Sttgate-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, header: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


def standard_webhooks_secret(secret: str) -> str:
    """The account's secret as a Standard Webhooks library takes it: ``whsec_`` and the key in standard base64.

    Secrets are ``whsec_`` + base64 of 32 random bytes. Those made since Standard Webhooks signing came are in the
    standard alphabet and are returned unchanged; older ones used the URL-safe alphabet without padding, which some
    libraries decode to other bytes (or refuse), so they are re-encoded: the same key bytes, spelled the standard way.
    """
    body = secret.removeprefix(SECRET_PREFIX)
    standard = body.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("the webhook secret is not whsec_ followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return SECRET_PREFIX + base64.b64encode(key).decode()


def webhook_id(task_id: str, seq: int) -> str:
    """``webhook-id``: one event of one task; every retry of that event carries the same id."""
    return f"{task_id}:{seq}"


def standard_headers(signer: Webhook, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (``timestamp`` in whole seconds since the epoch)."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signer.sign(msg_id=msg_id, timestamp=when, data=body.decode()),
    }


def _head(task_id: str, seq: int, provider: str, event: str) -> str:
    return json.dumps({"task_id": task_id, "seq": seq, "provider": provider, "event": event})[:-1]


def message_body(task_id: str, seq: int, provider: str, text: str) -> bytes:
    """The ``message`` envelope with the provider's JSON embedded byte for byte as ``data``.

    The text is parsed once, only to check that it is one JSON value; it is then spliced in unchanged, so key
    order, number spelling and escapes are the provider's own. A text that is not JSON goes in as a JSON string.
    """
    try:
        json.loads(text)
        data = text.strip()
    except ValueError:
        data = json.dumps(text)
    return f'{_head(task_id, seq, provider, EVENT_MESSAGE)}, "data": {data}}}'.encode()


def ended_body(task_id: str, seq: int, provider: str, status: str, reason: str | None) -> bytes:
    """The final ``ended`` envelope: ``data`` = ``{"status", "reason"}``."""
    data = json.dumps({"status": status, "reason": reason})
    return f'{_head(task_id, seq, provider, EVENT_ENDED)}, "data": {data}}}'.encode()


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): base, 2·base, 4·base, … up to ``cap``."""
    factor: int = 2 ** (attempt - 1)
    return min(cap, base * factor)


@dataclass(frozen=True)
class Delivery:
    seq: int
    event: str
    body: bytes


@dataclass(frozen=True)
class Attempt:
    task_id: str
    seq: int
    attempt: int
    status_code: int | None
    error: str | None


AttemptRecorder = Callable[[Attempt], Awaitable[None]]


@dataclass(frozen=True)
class WebhookPolicy:
    timeout: float = 10.0
    max_attempts: int = 8
    backoff: float = 0.5
    backoff_max: float = 30.0
    queue_max: int = 1000

    @classmethod
    def from_settings(cls, settings: Any) -> WebhookPolicy:
        return cls(
            timeout=settings.webhook_timeout_seconds,
            max_attempts=max(1, settings.webhook_max_attempts),
            backoff=settings.webhook_backoff_seconds,
            backoff_max=settings.webhook_backoff_max_seconds,
            queue_max=max(1, settings.webhook_queue_max),
        )


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses a host with any forbidden address.

    The callback URL was checked when the task started; checking again at every connection closes DNS rebinding.
    """

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not address_allowed(result["host"], allow_private=self.allow_private):
                raise OSError(f"{host} resolves to {result['host']}, which webhooks may not reach")
        return results

    async def close(self) -> None:
        await self._inner.close()


def webhook_client(*, allow_private: bool, limit: int = 100) -> aiohttp.ClientSession:
    """The shared HTTP client for webhooks: address-checked at connect time, a deliberate connection limit."""
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=8, resolver=GuardedResolver(allow_private=allow_private)
    )
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}, auto_decompress=False)


class WebhookDeliverer:
    """Posts one task's events to its callback URL, in order, from a bounded queue."""

    def __init__(
        self,
        *,
        task_id: str,
        provider: str,
        callback_url: str,
        secret: str,
        client: aiohttp.ClientSession,
        policy: WebhookPolicy,
        recorder: AttemptRecorder | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.task_id = task_id
        self.provider = provider
        self.callback_url = callback_url
        self.secret = secret
        self.signer = Webhook(standard_webhooks_secret(secret))
        self.client = client
        self.policy = policy
        self.recorder = recorder
        self.sleep = sleep
        self.clock = clock
        self.seq = 0
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.ended_delivered = False
        self._queue: deque[Delivery] = deque()
        self._wakeup = asyncio.Event()
        self._ended = False
        self._degraded = False
        self._worker: asyncio.Task[None] | None = None
        self._inflight: Delivery | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"webhooks-{self.task_id}")

    @property
    def pending(self) -> int:
        """Events not yet handled: the one being delivered and those waiting."""
        return len(self._queue) + (self._inflight is not None)

    def message(self, text: str) -> None:
        """Queue a provider message; never waits. On overflow the oldest queued message is dropped."""
        if self._ended:
            return
        self.seq += 1
        if len(self._queue) >= self.policy.queue_max:
            self._drop_oldest_message()  # the event being delivered is not in the queue: it is never dropped
        self._queue.append(Delivery(self.seq, EVENT_MESSAGE, message_body(self.task_id, self.seq, self.provider, text)))
        self._wakeup.set()

    def _drop_oldest_message(self) -> None:
        for index, delivery in enumerate(self._queue):
            if delivery.event == EVENT_MESSAGE:
                del self._queue[index]
                self.dropped += 1
                return

    def end(self, status: str, reason: str | None) -> None:
        """Queue the ``ended`` event; only the first call counts, so a task has exactly one."""
        if self._ended:
            return
        self._ended = True
        self.seq += 1
        body = ended_body(self.task_id, self.seq, self.provider, status, reason)
        self._queue.append(Delivery(self.seq, EVENT_ENDED, body))
        self._wakeup.set()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the ``ended`` event has been handled (or delivery was aborted)."""
        if self._worker is None or self._worker.done():
            callback()
        else:
            self._worker.add_done_callback(lambda _: callback())

    async def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until ``ended`` has been handled (delivered or given up); False on timeout."""
        if self._worker is None:
            return not self.pending
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except TimeoutError:
            return False
        return True

    async def abort(self) -> None:
        """Stop delivering now (gateway shutdown after its grace period); what is queued is not sent."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            delivery = self._inflight = self._queue.popleft()
            ok = await self._deliver(delivery)
            self._inflight = None
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
            if delivery.event == EVENT_ENDED:
                self.ended_delivered = ok
                return

    async def _deliver(self, delivery: Delivery) -> bool:
        # After a delivery has used all its attempts the receiver is presumed down: each message then gets one
        # attempt until one succeeds, so a dead webhook cannot hold the task's end back for hours. ``ended``
        # always gets every attempt.
        attempts = 1 if self._degraded and delivery.event == EVENT_MESSAGE else self.policy.max_attempts
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, delivery.body),
            "X-Sttgate-Task-Id": self.task_id,
            "X-Sttgate-Seq": str(delivery.seq),
            "X-Sttgate-Event": delivery.event,
        }
        msg_id = webhook_id(self.task_id, delivery.seq)
        for attempt in range(1, attempts + 1):
            stamped = headers | standard_headers(self.signer, msg_id, int(self.clock()), delivery.body)
            status, error = await self._post(delivery.body, stamped)
            await self._record(Attempt(self.task_id, delivery.seq, attempt, status, error))
            if status is not None and 200 <= status < 300:
                self._degraded = False
                return True
            if status is not None and status not in RETRY_STATUSES:
                return False
            if attempt < attempts:
                await self.sleep(backoff_delay(attempt, self.policy.backoff, self.policy.backoff_max))
        self._degraded = True
        return False

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        try:
            async with self.client.post(
                self.callback_url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
            ) as response:
                await response.read()
                return response.status, None if response.status < 300 else f"HTTP {response.status}"
        except TimeoutError:
            return None, f"no answer within {self.policy.timeout:g} s"
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__ or exc.os_error
            return None, f"cannot connect to {exc.host}:{exc.port}: {cause}"[:500]
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500]

    async def _record(self, attempt: Attempt) -> None:
        if self.recorder is None:
            return
        try:
            await self.recorder(attempt)
        except Exception:
            log.exception("recording webhook attempt failed", extra={"task_id": self.task_id})
