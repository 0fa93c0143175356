"""Posting account events (docs/contract.md#account-events) to each account's ``webhook_url``.

The events are rows of the store's outbox (:mod:`sttgate.store.events`), written where each occurrence was observed.
Every gateway runs one :class:`AccountEventPoster`: every ``account_events_poll_seconds`` it claims the due events
(no other gateway posts them while claimed), posts each through the pull webhooks' address-checked client, signed
like them with the account's webhook secret (``X-Sttgate-Signature`` and the Standard Webhooks headers with the
event's id as ``webhook-id``, :mod:`sttgate.pull.webhooks`), and marks it delivered, or due again after a backoff
(``webhook_backoff_seconds`` doubling up to ``webhook_backoff_max_seconds``). A delivery that fails is retried until
it succeeds; a receiver that answers 2xx but a retry follows (a gateway crashed between the post and the mark) sees the
same event id again. Once a minute it also records ``key.expiring`` for keys that expire
within 7 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from standardwebhooks import Webhook

from sttgate.config import Settings
from sttgate.gateway.metrics import GatewayMetrics
from sttgate.pull.webhooks import (
    SIGNATURE_HEADER,
    backoff_delay,
    sign,
    standard_headers,
    standard_webhooks_secret,
    webhook_client,
)
from sttgate.store import Store
from sttgate.store.database import unavailable, utcnow
from sttgate.store.events import PendingEvent

log = logging.getLogger("sttgate.events")

EVENT_ID_HEADER = "X-Sttgate-Event-Id"
EVENT_TYPE_HEADER = "X-Sttgate-Event"
# Events claimed per round; each is posted concurrently with the others of its round.
BATCH = 50
KEY_SCAN_SECONDS = 60.0


def signed_headers(event: PendingEvent, timestamp: int) -> dict[str, str]:
    """The headers of one attempt to post an event: its signature over the exact body both ways (``X-Sttgate-Signature``
    and the Standard Webhooks headers, whose ``webhook-id`` is the event's stable id, the same on every retry), its id
    and its type. ``timestamp`` is the attempt's, in whole seconds since the epoch."""
    body = event.body.encode()
    signer = Webhook(standard_webhooks_secret(event.secret))
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(event.secret, body),
        EVENT_ID_HEADER: event.id,
        EVENT_TYPE_HEADER: event.type,
        **standard_headers(signer, event.id, timestamp, body),
    }


class AccountEventPoster:
    """This gateway's share of account-event delivery (see the module's docstring)."""

    def __init__(self, settings: Settings, store: Store, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.client: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_key_scan = -KEY_SCAN_SECONDS

    async def start(self) -> None:
        self.client = webhook_client(allow_private=self.settings.pull_allow_private)
        self._task = asyncio.create_task(self._run(), name="account-events")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:
                if unavailable(exc):
                    log.warning("event=account_events_error error=%s: %s", type(exc).__name__, exc)
                else:
                    log.exception("event=account_events_error")
            await asyncio.sleep(self.settings.account_events_poll_seconds)

    async def round(self) -> int:
        """Record expiring keys (once a minute), then claim and post the due events; how many were posted."""
        mono = time.monotonic()
        if mono - self._last_key_scan >= KEY_SCAN_SECONDS:
            self._last_key_scan = mono
            await self.store.events.record_expiring_keys(utcnow())
        hold = self.settings.webhook_timeout_seconds * 2 + 5
        events = await self.store.events.claim(BATCH, hold)
        if events:
            await asyncio.gather(*(self._post(e) for e in events))
        return len(events)

    async def _post(self, event: PendingEvent) -> None:
        assert self.client is not None
        error: str | None = None
        try:
            async with self.client.post(
                event.url,
                data=event.body.encode(),
                headers=signed_headers(event, int(time.time())),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_seconds),
            ) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.metrics.account_event_posts.labels("delivered").inc()
            await self.store.events.delivered(event.id)
            return
        self.metrics.account_event_posts.labels("failed").inc()
        s = self.settings
        delay = backoff_delay(event.attempts + 1, s.webhook_backoff_seconds, s.webhook_backoff_max_seconds)
        log.warning("event=account_event_failed id=%s attempt=%d error=%s", event.id, event.attempts + 1, error)
        await self.store.events.failed(event.id, error, delay)
