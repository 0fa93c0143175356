"""Tracing (docs/operations.md#tracing): one trace per session with spans for authentication, slot, upstream connect
and the session, events for cycles and the close, the client's W3C ``traceparent`` honoured; nothing of
OpenTelemetry imported when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is not set."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install 'sttgate[otel]')")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sttgate.gateway.tracing import Tracing
from tests.support.gateway import gateway_settings, running_gateway
from tests.support.upgrade import handshake
from tests.support.waiting import wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
async def traced(emulator, store) -> AsyncIterator[tuple[str, InMemorySpanExporter]]:
    """A gateway whose sessions are traced into memory: (its URL, the exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_gateway(gateway_settings(emulator), store, tracing=Tracing(provider)) as running:
        yield running.http_url, exporter
    provider.shutdown()


def finished(exporter: InMemorySpanExporter, name: str):
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_session_is_one_trace_under_the_clients_traceparent(traced, account) -> None:
    url, exporter = traced
    acct = await account()
    query = f"provider=assemblyai&api_key={acct.key}&sample_rate=16000&emu_echo=1"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}/ws/v2/audio-stream?{query}", headers={"traceparent": TRACEPARENT}) as ws,
    ):
        session_id = ws._response.headers["X-Session-Id"]
        for _ in range(60):  # 6 s of audio: two cycles
            await ws.send_bytes(b"\x00" * 3200)
        for _ in range(60):
            await ws.receive(timeout=5)
    [session] = await wait_for(lambda: finished(exporter, "session"), what="the session span ended")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"session", "authenticate", "slot", "upstream_connect"}
    assert {format(span.context.trace_id, "032x") for span in spans.values()} == {TRACE_ID}
    assert format(session.parent.span_id, "016x") == PARENT_ID and session.parent.is_remote
    for name in ("authenticate", "slot", "upstream_connect"):
        assert spans[name].parent.span_id == session.context.span_id, name
    assert spans["authenticate"].end_time <= spans["slot"].start_time <= spans["upstream_connect"].start_time
    attributes = session.attributes
    assert (attributes["sttgate.session"], attributes["sttgate.provider"]) == (session_id, "assemblyai")
    assert attributes["sttgate.account"] == acct.id
    cycles = [event for event in session.events if event.name == "cycle"]
    assert sum(event.attributes["opened"] for event in cycles) == 2
    assert cycles[-1].attributes["cycles"] == 2
    [close] = [event for event in session.events if event.name == "close"]
    assert (close.attributes["code"], close.attributes["closed_by"], close.attributes["cycles"]) == (1000, "client", 2)
    assert session.status.status_code is not StatusCode.ERROR


async def test_a_refused_handshake_is_a_trace_with_its_refusal(traced) -> None:
    url, exporter = traced
    status, _, _ = await handshake(f"{url}/ws/v2/audio-stream?provider=assemblyai&api_key=sk-mai-{'x' * 40}")
    assert status == 401
    [session] = await wait_for(lambda: finished(exporter, "session"), what="the session span ended")
    assert session.status.status_code is StatusCode.ERROR
    assert session.attributes["http.response.status_code"] == 401
    assert session.attributes["sttgate.refusal"] == "invalid_api_key"
    assert [span.name for span in exporter.get_finished_spans()] == ["authenticate", "session"]


def test_nothing_of_opentelemetry_is_imported_without_the_endpoint(tmp_path) -> None:
    program = (
        "import sys\n"
        "from sttgate.config import Settings\n"
        "from sttgate.web.app import create_app\n"
        "from sttgate.web.services import SERVICES\n"
        f"app = create_app(Settings(database_url='sqlite:///{tmp_path / 'x.db'}'))\n"
        "assert app[SERVICES].tracing is None\n"
        "loaded = [name for name in sys.modules if name.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_endpoint_makes_a_tracer(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert isinstance(Tracing.from_environment(), Tracing)


def test_the_endpoint_without_the_extra_is_a_start_up_error(monkeypatch) -> None:
    from sttgate.gateway import tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setattr(tracing.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install 'sttgate\[otel\]'"):
        tracing.check_available()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    tracing.check_available()  # nothing asked, nothing needed
