"""OpenTelemetry tracing (SPEC §25), in the ``gen_durable[otel]`` extra (the API only).

::

    from gen_durable import tracing
    tracing.instrument()            # the application's TracerProvider, never replaced

After :func:`instrument`, an insert or a signal made inside a sampled span stores that
span's W3C trace context (``traceparent``, ``tracestate``) with the row, and every
step runs in a ``gen_durable.step`` span parented on it: the trace that inserted the
instance, or the one that sent the signal that woke it. A step that raises records the
exception on its span. Until then — and after :func:`uninstrument` — the core checks
one attribute and does nothing else. Not imported by ``import gen_durable``.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__, _trace

W3C = TraceContextTextMapPropagator()


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace inserts, signals and steps with ``tracer_provider`` (default: the global
    provider the application set, looked up when each span starts)."""
    _trace.CAPTURE = capture
    _trace.TRACER = _StepTracer(tracer_provider)


def uninstrument() -> None:
    _trace.CAPTURE = None
    _trace.TRACER = None


def capture() -> str | None:
    """The current span's W3C context as the text stored with a row; None outside a
    valid span, so untraced inserts store nothing."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    W3C.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def extract(stored: str | None) -> Context:
    """The parent context a row's stored text names (an empty one when it names none
    or cannot be read: a step is never refused for a damaged trace column)."""
    if not stored:
        return Context()
    try:
        carrier = json.loads(stored)
    except ValueError:
        return Context()
    if not isinstance(carrier, dict):
        return Context()
    return W3C.extract({str(k): str(v) for k, v in carrier.items()})


class _StepTracer:
    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider

    def start(self, claim: Any, queue: str) -> _StepSpan:
        tracer = trace.get_tracer("gen_durable", __version__, tracer_provider=self._provider)
        span = tracer.start_span(
            "gen_durable.step",
            context=extract(claim.trace_context),
            kind=SpanKind.CONSUMER,
            attributes={
                "gen_durable.id": claim.id,
                "gen_durable.fsm": claim.fsm,
                "gen_durable.step": claim.step,
                "gen_durable.attempt": claim.attempt,
                "gen_durable.queue": queue,
            },
        )
        return _StepSpan(span)


class _StepSpan:
    def __init__(self, span: Span) -> None:
        self._span = span

    def error(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    def end(self, kind: str | None) -> None:
        if kind is not None:
            self._span.set_attribute("gen_durable.outcome", kind)
        self._span.end()
