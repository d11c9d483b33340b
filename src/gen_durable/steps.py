"""Step methods: one ``@gd.step`` method per step instead of a dispatcher (SPEC §26).

::

    class Order(gd.FSM[OrderState], initial="pay"):
        @gd.step
        async def pay(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
            return gd.Next(Order.ship, ctx.state)

        @gd.step
        def ship(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
            return gd.Done()

The method's name is the step's name, so ``ctx.step`` and the stored ``step`` column
read the same as with a ``step(self, step, ctx)`` dispatcher, and a row written by one
form runs under the other. An outcome names its next step by the method itself
(``Order.ship``) or by its name (``"ship"``); :func:`step_name` turns either into the
name, in one place, for outcomes, inserts and ``gen-durable graph``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import InvalidMachine
from .graph import check_references

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__gd_step__"
RESERVED = frozenset({"step", "handle", "perform", "backoff"})
"""Names a step method cannot take: they are the machine's own hooks."""


def step(fn: F) -> F:
    """Mark a method of a ``gd.FSM`` as the step of the same name (SPEC §26).

    The method takes ``(self, ctx)`` and returns an outcome; it may be ``async def``
    or plain ``def`` (run in a worker thread, as a plain ``step`` is)."""
    if not callable(fn):
        raise InvalidMachine(f"@gd.step decorates a method, not {fn!r}")
    setattr(fn, _MARK, True)
    return fn


def is_step(value: object) -> bool:
    """Whether ``value`` is a ``@gd.step`` method (a bound one forwards the mark)."""
    return callable(value) and getattr(value, _MARK, False) is True


def step_name(value: object) -> Any:
    """The step a ``Next``/``ScheduleChilds``/insert names: a step method gives its
    name; anything else is returned as is, for the caller's own validation to
    refuse with the error of its context."""
    if is_step(value):
        return getattr(value, "__name__", None)
    return value


def collect(cls: type) -> dict[str, bool]:
    """The step methods of a machine class (its bases' included): name → is async.

    A subclass may override a step; a name reserved for the machine's hooks, or a
    step method that does not take ``(self, ctx)``, is refused here, when the class
    statement runs."""
    found: dict[str, bool] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if not is_step(value):
                if name in found and value is not None:
                    del found[name]  # overridden by something that is not a step
                continue
            if name in RESERVED:
                raise InvalidMachine(
                    f"{cls.__qualname__}.{name}: {name!r} is reserved for the machine "
                    "itself and cannot be a @gd.step method; rename the step"
                )
            params = list(inspect.signature(value).parameters.values())
            if len(params) != 2 or any(
                p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
            ):
                raise InvalidMachine(
                    f"{cls.__qualname__}.{name}: a @gd.step method takes (self, ctx)"
                )
            found[name] = inspect.iscoroutinefunction(value)
    return found


def adopt(cls: type, is_job: bool, steps: dict[str, bool], other: bool) -> None:
    """The step-method form (SPEC §26): an FSM only, not mixed with a dispatcher,
    ``initial`` and every step referenced as ``<ThisClass>.<x>`` one of its methods."""
    where = cls.__qualname__
    if is_job:
        raise InvalidMachine(f"{where}: @gd.step methods are for gd.FSM; a gd.Job has perform")
    if other:
        raise InvalidMachine(
            f"{where} mixes @gd.step methods with a step(self, step, ctx) dispatcher; use one form"
        )
    target: Any = cls
    initial = target.__gd_initial__
    if initial not in steps:
        raise InvalidMachine(
            f"{where}: initial step {initial!r} is not a @gd.step method "
            f"(its steps: {', '.join(sorted(steps))})"
        )
    target.__gd_steps__ = steps
    target.__gd_async_handle__ = inspect.iscoroutinefunction(getattr(cls, "handle", None))
    check_references(target, steps)


__all__ = ["adopt", "collect", "is_step", "step", "step_name"]
