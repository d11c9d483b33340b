"""Running one claimed step and turning whatever happens into one outcome (SPEC §4, §5, §15).

The pipeline for a claim: resolve the machine (a miss hands the row back, §13) → load
the state → build the context → call ``step``/``perform`` (async on the loop, sync in
the thread pool) → validate and encode the outcome. Everything from the call to the
encoding is the *guarded region*: any ``Exception`` in it — a user error, a bad outcome,
unencodable state — goes through ``handle`` (§5), and a failure there ends the
instance ``failed`` with the error recorded (§18.4). Nothing in it can crash the
engine or leave the row for the reaper to re-run forever. That includes
``BaseException``s raised by user code — ``SystemExit``, ``KeyboardInterrupt``, a
``CancelledError`` the step raised itself (SPEC §5, v2): one poisoned row must not kill
node after node. Only the engine's own cancellation of the step's task (a drain that
gave up) propagates; then no outcome is written and the claim is handed back.

An outcome PostgreSQL refuses for good (a child's key too large to index, a statement
timeout on a huge fan-out) comes back from the completer as :class:`OutcomeRefused`:
it is an error of the step, routed through ``handle`` like any other, and if ``handle``
cannot produce an outcome the database accepts, the instance fails with the
database's message — never a crash loop (issue A of the hardening work, §18.4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import outcomes as oc
from .. import telemetry
from .._db import codec
from .._db.statements.pick import Claim as Claim  # the pick decodes rows into it
from ..client import build_insert
from ..errors import Cancel, EncodingError, InvalidOutcome, OutcomeRefused
from ..machine import Context, Job, Machine, Signal
from .completer import Committed, Completer, Completion
from .history import error_entry, log_step_error
from .stats import Stats
from .threads import DaemonThreadPool

log = logging.getLogger("gen_durable")

_UNLOADED: Any = object()  # the claim's state has not been decoded yet

_KIND = {
    oc.Next: "next",
    oc.Replay: "replay",
    oc.Await: "await",
    oc.ScheduleChilds: "schedule_childs",
    oc.Done: "done",
    oc.Stop: "stop",
}


def engine_cancelled(exc: BaseException) -> bool:
    """True when ``exc`` is the engine cancelling the current task (a drain that gave
    up), not a ``CancelledError`` that user code raised on its own."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(slots=True)
class StepRun:
    """One step's encoded outcome plus what ``handle`` needs if the database refuses it."""

    completion: Completion
    state: Any
    instance: Machine | None = None
    ctx: Context[Any] | None = None
    signals: tuple[Signal, ...] = ()


def describe_error(error: BaseException) -> str:
    """A readable one-line error for ``last_error`` (NUL-free: it goes in a text column)."""
    text = str(error)
    out = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return codec.storable(out)


def reason_text(reason: Any) -> str:
    """``Stop(reason)`` records ``str(reason)`` (SPEC §4) — for an exception with its
    type in front: the default ``handle`` stops with the error itself, and a bare
    ``str`` of a ``KeyError`` reads ``'customer_id'``, which says nothing."""
    if isinstance(reason, BaseException):
        return describe_error(reason)
    return codec.storable(str(reason))


class Executor:
    """Runs claims; shared by every queue scheduler of one engine."""

    def __init__(
        self,
        completer: Completer,
        threads: DaemonThreadPool,
        stats: Stats,
        run_ahead: int = 0,
    ) -> None:
        self._completer = completer
        self._threads = threads
        self._stats = stats
        self._run_ahead = run_ahead

    async def run(
        self,
        claim: Claim,
        machine: type[Machine],
        may_keep: Callable[[int], bool] = lambda priority: False,
    ) -> str | None:
        """Run a claim's step to a committed outcome; returns the final status
        (None: stale).

        Run-ahead: a ``Next`` may keep the claim (the row stays ``executing`` with a
        fresh lease) and its next step runs at once on the inbox and children the
        commit returned — no pick, no queue round trip. Allowed up to ``run_ahead``
        consecutive steps, never for a ``partition_key`` row (the key's other
        instances must get their turn in order, SPEC §9), and only while ``may_keep``
        says the scheduler has nothing more urgent waiting and is not draining.
        """
        state: Any = _UNLOADED
        chained = 0
        while True:
            run = await self._step(claim, machine, state)
            completion, state = run.completion, run.state
            if (
                completion.kind == "next"
                and chained < self._run_ahead
                and claim.partition_key is None
                and may_keep(claim.priority)
            ):
                completion.keep = True
            committed = await self._commit_or_handle(claim, machine, run)
            self._stats.steps += 1
            if committed is None or committed[0] != "executing":
                return None if committed is None else committed[0]
            chained += 1
            claim = Claim(
                id=claim.id,
                fsm=claim.fsm,
                fsm_version=claim.fsm_version,
                step=completion.step or claim.step,
                state_text=completion.state if completion.state is not None else claim.state_text,
                attempt=0,
                awaits=None,
                priority=claim.priority,
                partition_key=claim.partition_key,
                inbox_text=committed[1],
                childs_text=claim.childs_text,  # terminal children cannot change under a chain
                token=claim.token,
            )
            # Reuse the validated model the step returned (no pydantic round trip);
            # otherwise — state kept, or a plain dict that must not alias the step's
            # own object — decode the stored text afresh.
            state = completion.state_obj if completion.state_obj is not None else _UNLOADED

    async def _step(self, claim: Claim, machine: type[Machine], state: Any) -> StepRun:
        """Run one step; returns its encoded outcome and the state the step saw."""
        started = time.perf_counter()
        try:
            if state is _UNLOADED:
                state = machine.load_state(claim.state_text)
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            # The stored state no longer fits the model (the schema changed under
            # stored rows): deterministic, so retrying cannot help.
            log.error("instance %s: cannot load state of %s: %s", claim.id, machine.describe(), exc)
            completion = Completion(
                claim.id,
                claim.token,
                "stop",
                error=f"cannot load state of {machine.describe()}: {describe_error(exc)}",
                error_entry=error_entry(exc, claim.step, claim.attempt),
            )
            completion.started = started
            return StepRun(completion, None)
        signals = claim.signals()
        ctx: Context[Any] = Context(
            id=claim.id,
            fsm=claim.fsm,
            fsm_version=claim.fsm_version,
            step=claim.step,
            attempt=claim.attempt,
            state=state,
            signals=signals,
            childs=claim.childs(),
        )
        try:
            instance = machine()
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            completion = Completion(
                claim.id,
                claim.token,
                "stop",
                error=f"cannot create {machine.describe()}: {describe_error(exc)}",
                consume=claim.awaits,
                seen=tuple(s.id for s in signals),
                error_entry=error_entry(exc, claim.step, claim.attempt),
            )
            completion.started = started
            return StepRun(completion, state)
        try:
            outcome = await self._call_step(instance, machine, ctx)
            completion = encode(outcome, claim, machine, signals)
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            log_step_error(claim.id, machine.describe(), claim.step, claim.attempt, exc)
            if telemetry.listening("step.exception"):
                telemetry.emit(
                    "step.exception",
                    {"duration": time.perf_counter() - started},
                    {"id": claim.id, "fsm": claim.fsm, "step": claim.step, "error": exc},
                )
            completion = await self._handle(instance, machine, ctx, exc, claim, signals)
        completion.started = started
        return StepRun(completion, state, instance, ctx, signals)

    async def _commit_or_handle(
        self, claim: Claim, machine: type[Machine], run: StepRun
    ) -> Committed | None:
        """Commit a step's outcome; one the database refuses for good goes through
        ``handle`` once, and if that is refused too the instance fails with the
        database's message."""
        try:
            return await self._commit(claim, run.completion)
        except OutcomeRefused as exc:
            refused = exc
        log.warning(
            "instance %s (%s): step %r: %s", claim.id, machine.describe(), claim.step, refused
        )
        started = run.completion.started
        if run.instance is not None and run.ctx is not None:
            completion = await self._handle(
                run.instance, machine, run.ctx, refused, claim, run.signals
            )
            completion.started = started
            try:
                return await self._commit(claim, completion)
            except OutcomeRefused as again:
                refused = again
        stop = Completion(
            claim.id,
            claim.token,
            "stop",
            error=describe_error(refused),
            consume=claim.awaits,
            seen=_seen(run.signals),
            error_entry=error_entry(refused, claim.step, claim.attempt),
        )
        stop.started = started
        return await self._commit(claim, stop)

    async def _commit(self, claim: Claim, completion: Completion) -> Committed | None:
        kind = completion.kind
        committed = await self._completer.commit(completion)
        if committed is None:
            log.warning(
                "instance %s: %s outcome dropped, its claim was lost (lease expired)",
                claim.id,
                kind,
            )
            if telemetry.listening("outcome.stale"):
                telemetry.emit(
                    "outcome.stale", {"count": 1}, {"id": claim.id, "fsm": claim.fsm, "kind": kind}
                )
        elif telemetry.listening("step.stop"):
            telemetry.emit(
                "step.stop",
                {"duration": time.perf_counter() - completion.started},
                {"id": claim.id, "fsm": claim.fsm, "step": claim.step, "kind": kind},
            )
        return committed

    async def _call_step(self, instance: Machine, machine: type[Machine], ctx: Context[Any]) -> Any:
        if isinstance(instance, Job):
            perform: Callable[..., Any] = getattr(instance, "perform")  # noqa: B009
            args = (ctx.state, ctx) if instance.__gd_perform_takes_ctx__ else (ctx.state,)
            try:
                value = await self._call(perform, machine.__gd_async_step__, *args)
            except Cancel as exc:
                return oc.Stop(exc.reason)
            return oc.Done(value)
        step: Callable[..., Any] = getattr(instance, "step")  # noqa: B009
        return await self._call(step, machine.__gd_async_step__, ctx.step, ctx)

    async def _call(self, fn: Callable[..., Any], is_async: bool, *args: Any) -> Any:
        if is_async:
            return await fn(*args)
        # A drain that gives up cancels this await; the thread runs on and its result
        # is discarded (the row was handed back, so its outcome would be stale).
        loop = asyncio.get_running_loop()
        return await asyncio.wrap_future(self._threads.submit(fn, *args), loop=loop)

    async def _handle(
        self,
        instance: Machine,
        machine: type[Machine],
        ctx: Context[Any],
        error: BaseException,
        claim: Claim,
        signals: tuple[Signal, ...],
    ) -> Completion:
        # In handle, ctx.signals and ctx.childs are empty (SPEC §5).
        bare: Context[Any] = Context(
            ctx.id, ctx.fsm, ctx.fsm_version, ctx.step, ctx.attempt, ctx.state
        )
        handle: Callable[..., Any] = getattr(instance, "handle")  # noqa: B009
        try:
            outcome = await self._call(handle, machine.__gd_async_handle__, error, bare)
            completion = encode(outcome, claim, machine, signals)
            # Whatever handle made of it, the error goes in the history (SPEC §5).
            completion.error_entry = error_entry(error, ctx.step, ctx.attempt)
            return completion
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            if exc.__context__ is None and exc is not error:
                exc.__context__ = error  # a sync handle ran in a thread: chain it by hand
            log.error(
                "instance %s (%s): handle failed on %s: %s",
                claim.id,
                machine.describe(),
                describe_error(error),
                describe_error(exc),
                exc_info=exc,
            )
            return Completion(
                claim.id,
                claim.token,
                "stop",
                error=f"handle failed: {describe_error(exc)} "
                f"(while handling {describe_error(error)})",
                consume=claim.awaits,
                seen=_seen(signals),
                error_entry=error_entry(exc, ctx.step, ctx.attempt, handling=describe_error(error)),
            )


def _seen(signals: tuple[Signal, ...]) -> tuple[int, ...]:
    return tuple(s.id for s in signals)


def _state_text(outcome_state: Any, machine: type[Machine], into: Completion) -> str | None:
    if outcome_state is None:
        return None  # keep the stored state
    value = machine.coerce_state(outcome_state, "outcome state")
    if machine.__gd_state__ is not None:
        into.state_obj = value
    return codec.dumps(value, f"state of {machine.__gd_name__}")


def encode(
    outcome: Any, claim: Claim, machine: type[Machine], signals: tuple[Signal, ...]
) -> Completion:
    """Validate an outcome and encode it for the completer (raises inside the guard)."""
    kind = _KIND.get(type(outcome))
    if kind is None:
        raise InvalidOutcome(
            f"{machine.describe()} step {claim.step!r} returned {outcome!r}; a step must "
            "return one of gd.Next, gd.Replay, gd.Await, gd.ScheduleChilds, gd.Done, gd.Stop"
        )
    seen = _seen(signals)
    base = Completion(claim.id, claim.token, kind, consume=claim.awaits, seen=seen)
    if isinstance(outcome, oc.Next):
        base.step = _step_name(outcome.step)
        base.state = _state_text(outcome.state, machine, base)
    elif isinstance(outcome, oc.Replay):
        base.state = _state_text(outcome.state, machine, base)
        try:
            base.delay = oc.seconds(outcome.delay, "Replay delay")
        except (TypeError, ValueError) as exc:
            raise InvalidOutcome(str(exc)) from exc
    elif isinstance(outcome, oc.Await):
        base.awaits = codec.check_text(_nonempty(outcome.signal, "Await signal"), "Await signal")
        base.state = _state_text(outcome.state, machine, base)
        base.consume = None
    elif isinstance(outcome, oc.ScheduleChilds):
        base.step = _step_name(outcome.step)
        base.state = _state_text(outcome.state, machine, base)
        if isinstance(outcome.children, str | bytes) or not hasattr(outcome.children, "__iter__"):
            raise InvalidOutcome("ScheduleChilds children must be a list of machines or gd.Spec")
        try:
            base.children = build_insert(outcome.children, parent_id=claim.id)
        except EncodingError:
            raise
        except Exception as exc:
            raise InvalidOutcome(f"ScheduleChilds: {exc}") from exc
    elif isinstance(outcome, oc.Done):
        base.result = codec.dumps(outcome.result, f"result of {machine.__gd_name__}")
    else:
        base.error = reason_text(outcome.reason)
    return base


def _nonempty(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOutcome(f"{what} must be a non-empty str, got {value!r}")
    return value


def _step_name(value: Any) -> str:
    return codec.check_text(_nonempty(value, "step name"), "step name")
