"""``run_step``: one step as pure code, no database (SPEC §24).

For unit tests of a machine's logic: build the context a step would see — state,
inbox, children, attempt — call the step (a ``@gd.step`` method, the ``step``
dispatcher or a job's ``perform``) and return its outcome. Nothing is committed and
``handle`` is not called: an exception the step raises reaches the test as it is.
The outcome comes back with its step as a name (``outcome.step == "ship"``), the way
the engine would store it, after the checks the engine makes of every outcome.
An ``async`` step runs to its end on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import outcomes as oc
from ..errors import Cancel, ConfigurationError, InvalidOutcome
from ..machine import Child, Context, Job, Machine, Signal
from ..steps import step_name


def _signals(items: Iterable[Any]) -> tuple[Signal, ...]:
    out: list[Signal] = []
    for n, item in enumerate(items, start=1):
        if isinstance(item, Signal):
            out.append(item)
        elif isinstance(item, str):
            out.append(Signal(n, item, None))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(Signal(n, item[0], item[1]))
        else:
            raise ConfigurationError(
                f"signals items are gd.Signal, a name, or (name, payload); got {item!r}"
            )
    return tuple(out)


def _context(
    machine: type[Machine[Any]], step: str, state: Any, signals: Any, childs: Any, attempt: int
) -> Context[Any]:
    wrong = [c for c in childs if not isinstance(c, Child)]
    if wrong:
        raise ConfigurationError(f"childs items must be gd.Child, got {wrong[0]!r}")
    value = machine.coerce_state(state, error=ConfigurationError)
    if machine.__gd_state__ is None and isinstance(value, Mapping):
        value = dict(value)  # the step may change its own copy, as in the engine
    return Context(
        id=0,
        fsm=machine.__gd_name__,
        fsm_version=machine.__gd_version__,
        step=step,
        attempt=attempt,
        state=value,
        signals=_signals(signals),
        childs=tuple(childs),
    )


def _call(machine: type[Machine[Any]], ctx: Context[Any]) -> Any:
    instance: Any = machine()
    if isinstance(instance, Job):
        args = (ctx.state, ctx) if instance.__gd_perform_takes_ctx__ else (ctx.state,)
        return getattr(instance, "perform")(*args)  # noqa: B009
    steps = machine.__gd_steps__
    if steps is None:
        return instance.step(ctx.step, ctx)
    if ctx.step not in steps:
        raise ConfigurationError(
            f"{machine.describe()} has no step {ctx.step!r} (its steps: {', '.join(sorted(steps))})"
        )
    return getattr(instance, ctx.step)(ctx)


def _checked(machine: type[Machine[Any]], ctx: Context[Any], value: Any) -> oc.Outcome:
    if isinstance(machine, type) and issubclass(machine, Job):
        return oc.Done(value)
    if not isinstance(value, oc.OUTCOME_TYPES):
        raise InvalidOutcome(
            f"{machine.describe()} step {ctx.step!r} returned {value!r}; a step must return "
            "one of gd.Next, gd.Replay, gd.Await, gd.ScheduleChilds, gd.Done, gd.Stop"
        )
    if isinstance(value, oc.Next | oc.ScheduleChilds):
        name = step_name(value.step)
        steps = machine.__gd_steps__
        if not isinstance(name, str) or (steps is not None and name not in steps):
            raise InvalidOutcome(f"{machine.describe()} has no step {name!r}")
        return dataclasses.replace(value, step=name)
    return value


def _prepare(machine: Any, step: Any, state: Any, signals: Any, childs: Any, attempt: int) -> Any:
    if not (isinstance(machine, type) and issubclass(machine, Machine)) or machine.__gd_abstract__:
        raise ConfigurationError(f"run_step takes a gd.FSM/gd.Job subclass, got {machine!r}")
    name = step_name(step if step is not None else machine.__gd_initial__)
    if not isinstance(name, str):
        raise ConfigurationError(f"step must be a step name or a @gd.step method, got {step!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ConfigurationError(f"attempt must be an int >= 0, got {attempt!r}")
    return _context(machine, name, state, signals, childs, attempt)


def _run_coroutine(coro: Any) -> Any:
    """Run an async step to its end on a loop of its own: here when no loop runs, else
    in a short-lived thread (an async test calling ``run_step`` blocks its own loop
    only for the step, which a pure step does not notice)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="gen_durable-run-step") as pool:
        return pool.submit(asyncio.run, coro).result()


def run_step(
    machine: type[Machine[Any]],
    step: Any = None,
    *,
    state: Any = None,
    signals: Iterable[Any] = (),
    childs: Iterable[Child] = (),
    attempt: int = 0,
) -> oc.Outcome:
    """Run one step of ``machine`` (by name or method; default ``initial``) on the
    given context and return its outcome (SPEC §24). ``signals`` items are
    ``gd.Signal``, a name, or ``(name, payload)``; ``childs`` items ``gd.Child``.

    ::

        outcome = gd.testing.run_step(Order, Order.pay, state=OrderState(sku="A1"))
        assert outcome == gd.Next("ship", OrderState(sku="A1", paid=True))
    """
    ctx = _prepare(machine, step, state, signals, childs, attempt)
    try:
        value = _call(machine, ctx)
        if inspect.iscoroutine(value):
            value = _run_coroutine(value)
    except Cancel as exc:
        if not issubclass(machine, Job):
            raise
        return oc.Stop(exc.reason)  # a job's Cancel is its Stop, as in the engine
    return _checked(machine, ctx, value)
