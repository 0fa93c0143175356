"""A pull task's session is one trace too (docs/operations.md#tracing): from the start request (under its
``traceparent``) to the session's end, long after that request was answered."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install 'sttgate[otel]')")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sttgate.gateway.tracing import Tracing
from tests.support.waiting import wait_for

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


async def test_a_pull_task_is_one_trace_until_its_session_ends(pull_gateway, account, media_server, receiver):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = await pull_gateway(tracing=Tracing(provider))
    acct = await account()
    _, hook = receiver
    body = {"audio_url": f"{media_server}/tone3.wav", "provider": "assemblyai", "callback_url": hook}
    headers = {"Authorization": f"Bearer {acct.key}", "traceparent": TRACEPARENT}
    async with gw.http.post(f"{gw.base}/api/v2/audio-stream/start", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        task_id = (await resp.json())["data"]["task_id"]
    # Answered, but the session runs on: its span is not ended yet.
    assert not [span for span in exporter.get_finished_spans() if span.name == "session"]
    assert (await gw.wait_status(acct.key, task_id))["status"] == "source_ended"
    [session] = await wait_for(
        lambda: [span for span in exporter.get_finished_spans() if span.name == "session"], what="the session span"
    )
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"session", "authenticate", "slot", "upstream_connect"}
    assert {format(span.context.trace_id, "032x") for span in spans.values()} == {TRACE_ID}
    assert session.attributes["sttgate.session"] == task_id
    [close] = [event for event in session.events if event.name == "close"]
    assert close.attributes["cycles"] == 1 and close.attributes["audio_seconds"] == 3.0
    assert [event.attributes["cycles"] for event in session.events if event.name == "cycle"] == [1]
    provider.shutdown()
