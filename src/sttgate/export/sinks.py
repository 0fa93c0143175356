"""The sinks usage events are sent to (docs/export.md): CloudEvents batches over HTTP, and Stripe meter events.

A sink's ``send`` takes a batch in order and answers how many of its first events were accepted; anything else
(a refusal, a timeout, a connection error) raises :class:`SinkError`, and the exporter retries from the first event
not accepted. Ids are the outbox's, so a re-send is de-duplicated by the sink.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent

from sttgate.config import ExportSink
from sttgate.core.usage_events import CYCLE_EVENT_TYPE, SinkType, UsageEvent

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class SinkError(Exception):
    """The sink did not accept a send (one line, recorded as the sink's last error); ``accepted``: how many of the
    batch's first events it did accept before that."""

    def __init__(self, message: str, accepted: int = 0) -> None:
        super().__init__(message)
        self.accepted = accepted


class Sink(Protocol):
    config: ExportSink
    # Whether an event can be sent only once its account has an ``external_id`` (until then it waits, pending).
    needs_external_id: bool

    async def send(self, events: Sequence[UsageEvent]) -> int: ...

    async def close(self) -> None: ...


def cloud_event(event: UsageEvent, source: str) -> CloudEvent:
    """One usage event as a CloudEvents 1.0 event (docs/export.md#cloudevents)."""
    attributes = {
        "type": CYCLE_EVENT_TYPE,
        "source": source,
        "id": event.id,
        "subject": event.subject,
        "time": event.charged_at.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, event.data())


def batch_body(events: Sequence[UsageEvent], source: str) -> bytes:
    """The JSON batch format of CloudEvents: an array of events, each in the library's structured JSON form."""
    return b"[" + b",".join(to_json(cloud_event(e, source)) for e in events) + b"]"


class CloudEventsSink:
    """POSTs batches to the collector's URL (as OpenMeter and compatible collectors ingest them); 2xx = accepted."""

    needs_external_id = False

    def __init__(self, config: ExportSink) -> None:
        self.config = config
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.timeout_seconds))

    async def send(self, events: Sequence[UsageEvent]) -> int:
        headers = {"Content-Type": BATCH_CONTENT_TYPE}
        secret = self.config.api_key.get_secret_value()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        try:
            async with self._http.post(
                self.config.url, data=batch_body(events, self.config.source), headers=headers
            ) as response:
                if not 200 <= response.status < 300:
                    raise SinkError(f"HTTP {response.status} from {self.config.url}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkError(f"{type(exc).__name__} from {self.config.url}: {exc}") from exc
        return len(events)

    async def close(self) -> None:
        await self._http.close()


class StripeSink:
    """Stripe Billing meter events through the official library, one ``POST /v1/billing/meter_events`` per event
    (``identifier`` and the idempotency key = the event id); ``payload[value]`` per the sink's ``value``."""

    needs_external_id = True  # payload[stripe_customer_id]

    def __init__(self, config: ExportSink) -> None:
        # The optional extra (sttgate[stripe]); config.py refuses a stripe sink at start-up when it is missing.
        stripe: Any = importlib.import_module("stripe")
        self.config = config
        self._stripe = stripe
        self._http = stripe.AIOHTTPClient(timeout=config.timeout_seconds)
        self._client = stripe.StripeClient(
            config.api_key.get_secret_value(),
            base_addresses={"api": config.api_base.rstrip("/")},
            http_client=self._http,
            max_network_retries=0,  # the exporter retries, with its own backoff
        )

    async def send(self, events: Sequence[UsageEvent]) -> int:
        accepted = 0
        for event in events:
            params = {
                "event_name": self.config.event_name,
                "identifier": event.id,
                "timestamp": int(event.charged_at.timestamp()),
                "payload": {
                    "stripe_customer_id": event.external_id,
                    "value": str(event.stripe_value(self.config.value)),
                },
            }
            try:
                await self._client.v1.billing.meter_events.create_async(
                    params=params, options={"idempotency_key": f"sttgate-{event.id}"}
                )
            except self._stripe.StripeError as exc:
                status = getattr(exc, "http_status", None)
                message = f"Stripe {status or type(exc).__name__}: {exc.user_message or exc}"
                raise SinkError(message, accepted) from exc
            accepted += 1
        return accepted

    async def close(self) -> None:
        await self._http.close_async()


def make_sink(config: ExportSink) -> Sink:
    """The sink of an ``[[export]]`` table."""
    if config.type is SinkType.STRIPE:
        return StripeSink(config)
    return CloudEventsSink(config)
