"""Local usage-export sinks for tests: a CloudEvents batch receiver and a Stripe meter-events recorder.

Both record what they accept, can be told to answer 500 for a while (``failing``), and check the shape of each
request as the real collector would: the CloudEvents receiver parses every event with the ``cloudevents`` library;
the Stripe recorder checks the form-encoded body of Stripe's documented ``POST /v1/billing/meter_events``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cloudevents.http import CloudEvent, from_json

from tests.support.servers import serve_app

STRIPE_KEY = "sk_test_export_recorder_key"


@dataclass
class CloudEventsReceiver:
    url: str = ""
    failing: bool = False
    events: list[CloudEvent] = field(default_factory=list)  # accepted, in arrival order (re-sends included)
    refused: int = 0  # requests answered 500
    problems: list[str] = field(default_factory=list)  # requests that broke the format

    @property
    def ids(self) -> list[str]:
        return [str(e["id"]) for e in self.events]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type != "application/cloudevents-batch+json":
            self.problems.append(f"content type {request.content_type}")
            return web.Response(status=415)
        if self.failing:
            self.refused += 1
            return web.Response(status=500, text="collector down")
        try:
            batch = json.loads(body)
            assert isinstance(batch, list) and batch
            # The library's own JSON reading of each structured event (it checks specversion and the required
            # attributes); the batch format is a JSON array of them.
            parsed = [from_json(json.dumps(item)) for item in batch]
        except Exception as exc:  # a bad batch is a test failure: recorded, answered 400
            self.problems.append(f"{type(exc).__name__}: {exc}")
            return web.Response(status=400)
        self.events.extend(parsed)
        return web.Response(status=202)


@dataclass
class StripeRecorder:
    api_base: str = ""
    failing: bool = False
    fail_after: int | None = None  # accept this many more calls, then start failing
    calls: list[dict[str, str]] = field(default_factory=list)  # accepted form bodies, in arrival order
    refused: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [c["identifier"] for c in self.calls]

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {STRIPE_KEY}":
            self.problems.append(f"authorization {request.headers.get('Authorization')!r}")
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=401)
        if request.content_type != "application/x-www-form-urlencoded":
            self.problems.append(f"content type {request.content_type}")
            return web.Response(status=415)
        form = {k: str(v) for k, v in (await request.post()).items()}
        expected = {"event_name", "payload[stripe_customer_id]", "payload[value]", "identifier", "timestamp"}
        if set(form) != expected or not form["timestamp"].isdigit() or not form["payload[value]"].isdigit():
            self.problems.append(f"form {form}")
            return web.json_response({"error": {"type": "invalid_request_error", "message": "bad"}}, status=400)
        if self.fail_after is not None:
            self.failing, self.fail_after = self.fail_after <= 0, None if self.fail_after <= 0 else self.fail_after - 1
        if self.failing:
            self.refused += 1
            return web.json_response({"error": {"type": "api_error", "message": "down"}}, status=500)
        self.calls.append(form)
        return web.json_response(_meter_event(form))


def _meter_event(form: dict[str, str]) -> dict[str, Any]:
    """The documented response object of the meter-event call."""
    return {
        "object": "billing.meter_event",
        "created": int(form["timestamp"]),
        "event_name": form["event_name"],
        "identifier": form["identifier"],
        "livemode": False,
        "payload": {"stripe_customer_id": form["payload[stripe_customer_id]"], "value": form["payload[value]"]},
        "timestamp": int(form["timestamp"]),
    }


@asynccontextmanager
async def export_sinks() -> AsyncIterator[tuple[CloudEventsReceiver, StripeRecorder]]:
    """Both sinks on ephemeral loopback ports."""
    receiver, recorder = CloudEventsReceiver(), StripeRecorder()
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    app.router.add_post("/v1/billing/meter_events", recorder.handle)
    async with serve_app(app) as base:
        receiver.url = f"{base}/events"
        recorder.api_base = base
        yield receiver, recorder


def export_config(receiver: CloudEventsReceiver, recorder: StripeRecorder) -> str:
    """The ``[[export]]`` tables of a gateway's ``--config`` file for both sinks (short backoff and send timeout for
    tests: the timeout must stay below the sinks' lease, which a test may shorten)."""
    return f"""
[[export]]
name = "meter"
type = "cloudevents"
url = "{receiver.url}"
source = "sttgate-test"
batch_size = 7
timeout_seconds = 1
backoff_seconds = 0.05
backoff_max_seconds = 0.3

[[export]]
name = "stripe"
type = "stripe"
api_base = "{recorder.api_base}"
api_key = "{STRIPE_KEY}"
event_name = "stt_seconds"
batch_size = 5
timeout_seconds = 1
backoff_seconds = 0.05
backoff_max_seconds = 0.3
"""
