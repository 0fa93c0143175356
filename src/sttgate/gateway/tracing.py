"""Tracing sessions with OpenTelemetry (docs/operations.md#tracing): one trace per session, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the optional extra ``sttgate[otel]`` is installed.

A session's trace is a ``session`` span (a child of the client's W3C ``traceparent`` when it sent one) with the spans
``authenticate``, ``slot`` and ``upstream_connect`` under it, a ``cycle`` event per charged cycle batch and a
``close`` event. The web layer begins it (:meth:`Tracing.begin`) and binds it to the handshake (:func:`handshake`);
the gateway code adds to it through :func:`span` and :func:`take`, which cost one context-variable read when tracing
is off. OpenTelemetry is imported only when tracing is configured (:meth:`Tracing.from_environment`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from sttgate.core.refusals import Refusal

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_NAME = "sttgate"
_NO_SPAN = contextlib.nullcontext()


class SessionTrace:
    """The trace of one session: its ``session`` span, child spans under it, events on it.

    Made by :meth:`Tracing.begin` for a handshake; the :class:`~sttgate.gateway.live.LiveSession` the handshake opens
    takes it (:func:`take`) and ends it when the session's end is recorded, however long after the handshake's
    handler that is (a pull task, a relay running as a task of its own). A handshake that opens no session ends it
    itself (:func:`handshake`)."""

    __slots__ = ("_context", "_span", "_tracer", "taken")

    def __init__(self, tracer: Any, span: Any, context: Any) -> None:
        self._tracer = tracer
        self._span = span
        self._context = context  # the OpenTelemetry context whose current span is the session's
        self.taken = False

    def child(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A span under the session span, ended when the block ends."""
        return self._tracer.start_as_current_span(name, context=self._context)  # type: ignore[no-any-return]

    def event(self, name: str, **attributes: str | int | float | bool | None) -> None:
        self._span.add_event(name, {key: value for key, value in attributes.items() if value is not None})

    def set(self, **attributes: str | int | float | bool) -> None:
        self._span.set_attributes({f"sttgate.{key}": value for key, value in attributes.items()})

    def failed(self, exc: BaseException) -> None:
        """The handshake failed: a refusal's HTTP status and code, and an error status."""
        from opentelemetry.trace import StatusCode

        if not self._span.is_recording():
            return
        if isinstance(exc, Refusal):
            self._span.set_attribute("http.response.status_code", exc.status)
            self.set(refusal=exc.code)
            self._span.set_status(StatusCode.ERROR, exc.code)
        else:
            self._span.set_status(StatusCode.ERROR, type(exc).__name__)

    def end(self) -> None:
        self._span.end()


_CURRENT: ContextVar[SessionTrace | None] = ContextVar("sttgate_session_trace", default=None)


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current handshake's trace around a block; nothing when there is none."""
    trace = _CURRENT.get()
    return _NO_SPAN if trace is None else trace.child(name)


def take() -> SessionTrace | None:
    """The current handshake's trace, now the session's to end (``LiveSession``); None when tracing is off."""
    trace = _CURRENT.get()
    if trace is not None:
        trace.taken = True
    return trace


@contextlib.contextmanager
def handshake(trace: SessionTrace | None) -> Iterator[None]:
    """Bind ``trace`` to this context while a handshake runs (for :func:`span` and :func:`take`); a failure is
    recorded on it, and it is ended here unless a session took it. Nothing when ``trace`` is None."""
    if trace is None:
        yield
        return
    token = _CURRENT.set(trace)
    try:
        yield
    except BaseException as exc:
        trace.failed(exc)
        raise
    finally:
        _CURRENT.reset(token)
        if not trace.taken:
            trace.end()


class Tracing:
    """The tracer sessions are traced with (one per app; the OTLP exporter's is per process)."""

    def __init__(self, tracer_provider: Any) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer_provider.get_tracer(_NAME)
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER
        self._in_context = set_span_in_context

    @classmethod
    def from_environment(cls) -> Tracing | None:
        """Tracing to the OTLP endpoint of ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter reads the other ``OTEL_*``
        variables itself; ``OTEL_SERVICE_NAME`` defaults to ``sttgate``); None when it is not set. Raises
        ``RuntimeError`` (one line) when it is set but the ``otel`` extra is not installed."""
        if not os.environ.get(ENDPOINT):
            return None
        return cls(_process_provider())

    def begin(self, headers: Mapping[str, str], **attributes: str | int) -> SessionTrace:
        """Start a session's trace: its ``session`` span, a child of the client's W3C ``traceparent`` if any."""
        parent = self._propagator.extract(carrier=headers)
        root = self._tracer.start_span("session", context=parent, kind=self._server)
        trace = SessionTrace(self._tracer, root, self._in_context(root))
        trace.set(**attributes)
        return trace


_PROVIDER: Any = None
_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def check_available() -> None:
    """Raise ``RuntimeError`` (one line, for ``serve`` to say before it starts) when ``OTEL_EXPORTER_OTLP_ENDPOINT``
    asks for tracing that cannot be done; imports nothing."""
    if not os.environ.get(ENDPOINT):
        return
    for module in _MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise RuntimeError(f"{ENDPOINT} is set but OpenTelemetry is not installed: pip install 'sttgate[otel]'")


def _process_provider() -> Any:
    """The process's tracer provider with the OTLP (HTTP) exporter, made once; flushed at exit."""
    global _PROVIDER
    if _PROVIDER is None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise RuntimeError(
                f"{ENDPOINT} is set but OpenTelemetry is not installed: pip install 'sttgate[otel]'"
            ) from None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or _NAME})
        provider = TracerProvider(resource=resource)  # shut down (flushed) by the SDK's own atexit hook
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _PROVIDER = provider
    return _PROVIDER
