"""The two places tracing hooks into the core (SPEC §25), both None unless
:func:`gen_durable.tracing.instrument` was called: off costs one attribute check.

* ``CAPTURE()`` returns the caller's trace context as text (stored with the row at
  insert and signal), or None outside a sampled trace.
* ``TRACER.start(claim)`` opens the span of one step and returns it; the executor
  calls ``error(exc)`` when the step raised and ``end(kind)`` once its outcome is
  committed.

This module imports nothing, so the core never loads OpenTelemetry by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class StepSpan(Protocol):
    def error(self, exc: BaseException) -> None: ...

    def end(self, kind: str | None) -> None: ...


class StepTracer(Protocol):
    def start(self, claim: Any, queue: str) -> StepSpan: ...


CAPTURE: Callable[[], str | None] | None = None
TRACER: StepTracer | None = None


def capture() -> str | None:
    return None if CAPTURE is None else CAPTURE()
