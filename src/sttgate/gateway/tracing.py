"""Tracing sessions with OpenTelemetry (docs/operations.md#tracing): one trace per session, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the optional extra ``sttgate[otel]`` is installed.

A session's trace is a ``session`` span (a child of the client's W3C ``traceparent`` when it sent one) with the spans
``authenticate``, ``slot`` and ``upstream_connect`` under it, a ``cycle`` event per charged cycle batch and a
``close`` event. The web layer opens the session span (:meth:`Tracing.session`), which binds a :class:`SessionTrace`
to the handling task's context; the gateway code adds to it through :func:`span` and :func:`current`, which cost one
context-variable read when tracing is off. OpenTelemetry is imported only by :meth:`Tracing.from_environment`.
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
    """The trace of one session: child spans, events on the session span."""

    __slots__ = ("_span", "_tracer")

    def __init__(self, tracer: Any, span: Any) -> None:
        self._tracer = tracer
        self._span = span

    def child(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A span under the session span (the current one of this context), ended when the block ends."""
        return self._tracer.start_as_current_span(name)  # type: ignore[no-any-return]

    def event(self, name: str, **attributes: str | int | float | bool | None) -> None:
        self._span.add_event(name, {key: value for key, value in attributes.items() if value is not None})

    def set(self, **attributes: str | int | float | bool) -> None:
        self._span.set_attributes({f"sttgate.{key}": value for key, value in attributes.items()})


_CURRENT: ContextVar[SessionTrace | None] = ContextVar("sttgate_session_trace", default=None)


def current() -> SessionTrace | None:
    """The trace of the session this task works for; None when tracing is off (or outside a session)."""
    return _CURRENT.get()


def span(name: str) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current session's trace around a block; nothing when there is none."""
    trace = _CURRENT.get()
    return _NO_SPAN if trace is None else trace.child(name)


class Tracing:
    """The tracer sessions are traced with (one per app; the OTLP exporter's is per process)."""

    def __init__(self, tracer_provider: Any) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer_provider.get_tracer(_NAME)
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER

    @classmethod
    def from_environment(cls) -> Tracing | None:
        """Tracing to the OTLP endpoint of ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter reads the other ``OTEL_*``
        variables itself; ``OTEL_SERVICE_NAME`` defaults to ``sttgate``); None when it is not set. Raises
        ``RuntimeError`` (one line) when it is set but the ``otel`` extra is not installed."""
        if not os.environ.get(ENDPOINT):
            return None
        return cls(_process_provider())

    @contextlib.contextmanager
    def session(self, headers: Mapping[str, str], **attributes: str | int) -> Iterator[SessionTrace]:
        """The ``session`` span around a whole push session, its parent the client's ``traceparent`` if any; bound
        to this context for :func:`span` and :func:`current`. A refusal raised through it is recorded on the span
        (its HTTP status and code) as an error."""
        parent = self._propagator.extract(carrier=headers)
        with self._tracer.start_as_current_span(
            "session", context=parent, kind=self._server, record_exception=False, set_status_on_exception=True
        ) as root:
            trace = SessionTrace(self._tracer, root)
            trace.set(**attributes)
            token = _CURRENT.set(trace)
            try:
                yield trace
            except Refusal as refusal:
                root.set_attribute("http.response.status_code", refusal.status)
                trace.set(refusal=refusal.code)
                raise
            finally:
                _CURRENT.reset(token)


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
