"""A small in-process event API (SPEC §14).

::

    def on_step(event, measurements, metadata):
        print(event, measurements["duration"], metadata["fsm"], metadata["kind"])

    gd.telemetry.attach("step.stop", on_step)

Handlers run synchronously on the emitting task, so keep them quick. A handler that
raises is logged and detached; it never breaks the engine. When nobody listens to an
event, emitting it costs one dict lookup: the engine checks :func:`listening` before
building the measurement dicts.

Events: ``step.stop``, ``step.exception``, ``pick.stop``, ``scheduler.saturation``,
``scheduler.drain``, ``partition.contended``, ``reaper.reaped``, ``reaper.poisoned``,
``registry.not_found``, ``outcome.stale``, ``send.dropped``, ``service.restarted``,
``service.failed``, ``await.timeout`` (``{"count"}``: waits the timer ended at their
deadline; metadata ``ids``); flow control (SPEC §23): ``rate_limit.throttled``,
``rate_limit.unknown``, ``schedule.inserted``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

Handler = Callable[[str, Mapping[str, Any], Mapping[str, Any]], object]

EVENTS = frozenset(
    {
        "step.stop",
        "step.exception",
        "pick.stop",
        "scheduler.saturation",
        "scheduler.drain",
        "partition.contended",
        "reaper.reaped",
        "reaper.poisoned",
        "registry.not_found",
        "outcome.stale",
        "send.dropped",
        "service.restarted",
        "service.failed",
        "instance.cancelled",
        "gc.swept",
        "await.timeout",
        "rate_limit.throttled",
        "rate_limit.unknown",
        "schedule.inserted",
    }
)

log = logging.getLogger("gen_durable")
_handlers: dict[str, tuple[Handler, ...]] = {}


def attach(event: str, handler: Handler) -> None:
    """Call ``handler(event, measurements, metadata)`` whenever ``event`` fires."""
    if event not in EVENTS:
        raise ValueError(f"unknown telemetry event {event!r}; known: {sorted(EVENTS)}")
    if not callable(handler):
        raise TypeError("handler must be callable")
    current = _handlers.get(event, ())
    if handler not in current:
        _handlers[event] = (*current, handler)


def detach(event: str, handler: Handler) -> None:
    """Stop calling ``handler`` for ``event`` (no error if it was not attached)."""
    current = _handlers.get(event, ())
    remaining = tuple(h for h in current if h != handler)
    if remaining:
        _handlers[event] = remaining
    else:
        _handlers.pop(event, None)


def listening(event: str) -> bool:
    return event in _handlers


def emit(event: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    for handler in _handlers.get(event, ()):
        try:
            handler(event, measurements, metadata)
        except Exception:
            log.exception("telemetry handler %r for %s raised; detaching it", handler, event)
            detach(event, handler)
