"""This gateway's pull tasks: launching, the stop-flag poll, webhook deliverers that outlive their task, shutdown.

One :class:`PullManager` per gateway app (created by :func:`sttgate.web.pull_api.setup`). Tasks run in this process;
the database is how other gateways reach them (a stop received elsewhere sets ``stop_requested``, which this
manager polls every ``STOP_POLL_SECONDS``).

The manager also owns where sources may connect: :attr:`PullManager.source_policy` (None when
``STTGATE_PULL_ALLOW_PRIVATE=1``: anywhere) and :attr:`PullManager.resolver`. The start check of ``audio_url``, the
egress guard (HTTP, HTTPS) and each task's source relay (RTSP, RTMP, RTMPS) all use these two, so a test that
replaces them (one loopback address playing a public one, a resolver that lies) exercises the real enforcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sttgate.config import Settings
from sttgate.core.outcomes import TaskStatus
from sttgate.gateway.logevents import log_event
from sttgate.pull.egress import EgressGuard
from sttgate.pull.ffmpeg import FFmpegSource, Pacer, default_ffmpeg, ffmpeg_argv, ffmpeg_env
from sttgate.pull.relay import RELAYED_SCHEMES, SourceRelay
from sttgate.pull.tasks import Ending, PullTask
from sttgate.pull.urlsafety import AddressPolicy, CheckedUrl, Resolver, check_audio_url, public_only, system_resolver
from sttgate.pull.webhooks import WebhookDeliverer, WebhookPolicy, webhook_client
from sttgate.store.database import utcnow
from sttgate.store.tasks import CRASHED, AttemptLog

if TYPE_CHECKING:
    import aiohttp

    from sttgate.gateway.live import LiveSession
    from sttgate.store import Store

log = logging.getLogger("sttgate.pull")

# A stop received by another gateway is acted on within this (docs/pull.md#stop-a-task: 1 s).
STOP_POLL_SECONDS = 0.5
# At shutdown, queued webhooks (every task's ``ended`` above all) get this long before they are abandoned.
SHUTDOWN_WEBHOOK_SECONDS = 10.0
TASK_END_SECONDS = 15.0
# At shutdown, the stop poll may finish the database call it is in for this long before it is cancelled.
POLL_FINISH_SECONDS = 5.0
# Tasks of dead gateways older than this get no late ``ended`` webhook (bounds the sweep's query).
CRASH_ENDINGS_WINDOW_SECONDS = 24 * 3600.0


class PullManager:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.ffmpeg = settings.ffmpeg or default_ffmpeg()
        self.policy = WebhookPolicy.from_settings(settings)
        self.tasks: dict[str, PullTask] = {}
        self.runners: dict[str, asyncio.Task[Ending]] = {}
        self.deliverers: set[WebhookDeliverer] = set()
        self.attempts = AttemptLog(store.tasks)
        self.client: aiohttp.ClientSession | None = None
        self.egress: EgressGuard | None = None
        self.source_policy: AddressPolicy | None = None if settings.pull_allow_private else public_only
        self.resolver: Resolver = system_resolver
        self._poll: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self.client = webhook_client(allow_private=self.settings.pull_allow_private)
        self.egress = EgressGuard(policy=self._source_allows, resolver=lambda host, port: self.resolver(host, port))
        await self.egress.start()
        self.attempts.start()
        self._poll = asyncio.create_task(self._poll_stops(), name="pull-stop-poll")

    def _source_allows(self, address: str, port: int) -> bool:
        return self.source_policy is None or self.source_policy(address, port)

    async def check_source(self, audio_url: object) -> CheckedUrl:
        """The start check of ``audio_url`` (400 ``invalid_audio_url``), under this manager's policy and resolver."""
        return await check_audio_url(
            audio_url,
            allow_private=self.source_policy is None,
            resolver=self.resolver,
            policy=self.source_policy,
        )

    def source_for(self, audio: CheckedUrl) -> FFmpegSource:
        """FFmpeg for a checked URL. When private addresses are refused, HTTP(S) goes through the egress guard and
        RTSP/RTMP(S) through a relay of its own, pinned to the addresses the check resolved."""
        timeout = self.settings.pull_source_timeout_seconds
        guarded = self.source_policy is not None
        proxy = None
        relay = None
        url, scheme = audio.url, audio.scheme
        options: tuple[str, ...] = ()
        if guarded and audio.scheme in ("http", "https"):
            assert self.egress is not None, "PullManager.start() was not awaited"
            proxy = self.egress.proxy_url
        elif guarded and audio.scheme in RELAYED_SCHEMES:
            relay = SourceRelay(audio, self._source_allows)
            relayed = relay.ffmpeg_input()
            url, scheme, options = relayed.url, relayed.scheme, relayed.options
        return FFmpegSource(
            ffmpeg_argv(self.ffmpeg, url, scheme, io_timeout_seconds=timeout, options=options),
            source_timeout=timeout,
            pacer=Pacer(),
            env=ffmpeg_env(proxy),
            relay=relay,
        )

    def launch(self, *, task_id: str, live: LiveSession, audio: CheckedUrl, callback_url: str, secret: str) -> PullTask:
        """Start running a task whose session is open and whose row exists."""
        assert self.client is not None, "PullManager.start() was not awaited"
        deliverer = WebhookDeliverer(
            task_id=task_id,
            provider=live.provider_name,
            callback_url=callback_url,
            secret=secret,
            client=self.client,
            policy=self.policy,
            recorder=self.attempts.record,
        )
        deliverer.start()
        self.deliverers.add(deliverer)
        task = PullTask(
            task_id=task_id,
            live=live,
            source=self.source_for(audio),
            deliverer=deliverer,
            store=self.store,
            on_ended=self._ended,
        )
        self.tasks[task_id] = task
        self.runners[task_id] = asyncio.create_task(task.run(), name=f"pull-task-{task_id}")
        # Only scheme and host: a source URL's path or query may carry the customer's own credentials.
        log_event("pull_task_start", task=task_id, provider=live.provider_name, source=f"{audio.scheme}://{audio.host}")
        return task

    def _ended(self, task: PullTask) -> None:
        self.tasks.pop(task.id, None)
        self.runners.pop(task.id, None)
        deliverer = task.deliverer
        deliverer.on_done(lambda: self.deliverers.discard(deliverer))

    def stop_local(self, task_id: str) -> bool:
        task = self.tasks.get(task_id)
        if task is None:
            return False
        task.stop()
        return True

    async def _poll_stops(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while not self._closing.is_set():
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + self.settings.lease_ttl_seconds
                try:
                    await self.send_crash_endings()
                except Exception:
                    log.exception("event=background_error task=pull_crash_endings")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), STOP_POLL_SECONDS)
            if not self.tasks or self._closing.is_set():
                continue
            try:
                for task_id in await self.store.tasks.stop_requested(list(self.tasks)):
                    self.stop_local(task_id)
            except Exception:
                log.exception("event=background_error task=pull_stop_poll")

    async def send_crash_endings(self) -> None:
        """The ``ended`` webhook of tasks whose gateway died: sent once, by whichever gateway claims it first, with
        the ``seq`` after the last one the dead gateway attempted."""
        assert self.client is not None
        since = utcnow() - timedelta(seconds=CRASH_ENDINGS_WINDOW_SECONDS)
        for crashed in await self.store.tasks.claim_crashed(since=since):
            deliverer = WebhookDeliverer(
                task_id=crashed.id,
                provider=crashed.provider,
                callback_url=crashed.callback_url,
                secret=await self.store.webhook_secret(crashed.account_id),
                client=self.client,
                policy=self.policy,
                recorder=self.attempts.record,
            )
            deliverer.seq = await self.store.tasks.last_seq(crashed.id)
            deliverer.start()
            deliverer.end(TaskStatus.GATEWAY_SHUTDOWN, CRASHED)
            self.deliverers.add(deliverer)
            deliverer.on_done(functools.partial(self.deliverers.discard, deliverer))
            log_event("pull_task_crash_ended", task=crashed.id)

    async def close(self) -> None:
        """Shutdown: every task ends ``gateway_shutdown`` (with its ``ended`` webhook), then clean up."""
        if self._poll is not None:
            # The poll stops between its database calls, not inside one: cancelling a call while the SQLite driver
            # opens a connection leaves the driver's thread running after the event loop has closed.
            self._closing.set()
            await asyncio.wait([self._poll], timeout=POLL_FINISH_SECONDS)
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        for task in list(self.tasks.values()):
            task.halt(Ending(TaskStatus.GATEWAY_SHUTDOWN, "the gateway is shutting down"))
        runners = list(self.runners.values())
        if runners:
            await asyncio.wait(runners, timeout=TASK_END_SECONDS)
        deliverers = list(self.deliverers)
        if deliverers:
            await asyncio.wait(
                [asyncio.ensure_future(d.wait_done()) for d in deliverers], timeout=SHUTDOWN_WEBHOOK_SECONDS
            )
            for deliverer in deliverers:
                await deliverer.abort()
        await self.attempts.close()
        if self.client is not None:
            await self.client.close()
        if self.egress is not None:
            await self.egress.close()
