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

from .. import _trace, telemetry
from .. import outcomes as oc
from .._db.statements.pick import Claim as Claim  # the pick decodes rows into it
from .._trace import StepSpan
from ..errors import Cancel, InvalidOutcome, OutcomeRefused
from ..machine import Context, Job, Machine, Signal
from .completer import Committed, Completer, Completion
from .encode import describe_error, encode, seen_ids
from .history import error_entry, log_step_error
from .slots import UNBOUNDED, Slots
from .stats import Stats
from .threads import DaemonThreadPool

log = logging.getLogger("gen_durable")

_UNLOADED: Any = object()  # the claim's state has not been decoded yet


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
        queue: str = "",
        slots: Slots = UNBOUNDED,
    ) -> str | None:
        """Run a claim's step to a committed outcome; the final status (None: stale).

        Run-ahead: an undelayed ``Next`` may keep the claim (the row stays ``executing`` with a
        fresh lease) and its next step runs at once on the inbox and children the
        commit returned — no pick, no queue round trip. Allowed up to ``run_ahead``
        consecutive steps, never for a ``partition_key`` row (the key's other
        instances must get their turn in order, SPEC §9) nor a ``rate_limit`` one (each
        step start takes a token at the pick, §23), and only while ``may_keep``
        says the scheduler has nothing more urgent waiting and is not draining.

        ``slots``: the queue's step slots (none to keep outside a scheduler); the step
        gives its slot up while its outcome commits and takes one again before a
        continuation or a ``handle`` runs.
        """
        state: Any = _UNLOADED
        chained = 0
        while True:
            span = None if _trace.TRACER is None else _trace.TRACER.start(claim, queue)
            run = await self._step(claim, machine, state, span)
            completion, state = run.completion, run.state
            if chained < self._run_ahead and _may_chain(claim, completion, may_keep):
                completion.keep = True
            slots.computed(claim.id)
            try:
                committed = await self._commit(claim, completion)
            except OutcomeRefused as exc:
                await slots.resume(claim.id)  # handle is the user's code: it runs in a slot
                committed = await self._refused(claim, machine, run, exc)
                slots.computed(claim.id)
            finally:
                if span is not None:
                    span.end(completion.kind)
            self._stats.steps += 1
            if committed is None or committed[0] != "executing":
                return None if committed is None else committed[0]
            chained += 1
            await slots.resume(claim.id)
            claim = _chained(claim, completion, committed[1])
            # Reuse the validated model the step returned (no pydantic round trip);
            # otherwise — state kept, or a plain dict that must not alias the step's
            # own object — decode the stored text afresh.
            state = completion.state_obj if completion.state_obj is not None else _UNLOADED

    async def _step(
        self, claim: Claim, machine: type[Machine], state: Any, span: StepSpan | None = None
    ) -> StepRun:
        """Run one step; returns its encoded outcome and the state the step saw."""
        started = time.perf_counter()
        signals = claim.signals()
        prepared = self._prepare(claim, machine, state, signals)
        if isinstance(prepared, Completion):
            prepared.started = started
            return StepRun(prepared, None if state is _UNLOADED else state)
        instance, ctx = prepared
        try:
            outcome = await self._call_step(instance, machine, ctx)
            completion = encode(outcome, claim, machine, signals)
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            log_step_error(claim.id, machine.describe(), claim.step, claim.attempt, exc)
            if span is not None:
                span.error(exc)
            if telemetry.listening("step.exception"):
                telemetry.emit(
                    "step.exception",
                    {"duration": time.perf_counter() - started},
                    {"id": claim.id, "fsm": claim.fsm, "step": claim.step, "error": exc},
                )
            completion = await self._handle(instance, machine, ctx, exc, claim, signals)
        completion.started = started
        return StepRun(completion, ctx.state, instance, ctx, signals)

    def _prepare(
        self, claim: Claim, machine: type[Machine], state: Any, signals: tuple[Signal, ...]
    ) -> tuple[Machine, Context[Any]] | Completion:
        """The machine instance and context for a step — or, when the stored state no
        longer fits the model or the class cannot be built, the failure that ends it
        (deterministic: retrying cannot help)."""
        try:
            if state is _UNLOADED:
                state = machine.load_state(claim.state_text)
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            log.error("instance %s: cannot load state of %s: %s", claim.id, machine.describe(), exc)
            return failure(claim, signals, exc, f"cannot load state of {machine.describe()}")
        ctx: Context[Any] = Context(
            id=claim.id,
            fsm=claim.fsm,
            fsm_version=claim.fsm_version,
            step=claim.step,
            attempt=claim.attempt,
            state=state,
            signals=signals,
            childs=claim.childs(),
            awaited=_awaited(claim, signals),
            timed_out=claim.timed_out,
        )
        try:
            return machine(), ctx
        except BaseException as exc:
            if engine_cancelled(exc):
                raise
            return failure(claim, signals, exc, f"cannot create {machine.describe()}")

    async def _refused(
        self, claim: Claim, machine: type[Machine], run: StepRun, refused: OutcomeRefused
    ) -> Committed | None:
        """An outcome the database refused for good goes through ``handle`` once; if
        that outcome is refused too the instance fails with the database's message."""
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
        stop = failure(claim, run.signals, refused)
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
        steps = machine.__gd_steps__
        if steps is not None:  # one @gd.step method per step (SPEC §26)
            is_async = steps.get(ctx.step)
            if is_async is None:  # a row inserted or left at a step the class lacks
                raise InvalidOutcome(
                    f"{machine.describe()} has no step {ctx.step!r} "
                    f"(its steps: {', '.join(sorted(steps))})"
                )
            return await self._call(getattr(instance, ctx.step), is_async, ctx)
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
            return failure(
                claim,
                signals,
                exc,
                "handle failed",
                suffix=f" (while handling {describe_error(error)})",
                handling=describe_error(error),
            )


def failure(
    claim: Claim,
    signals: tuple[Signal, ...],
    error: BaseException,
    what: str = "",
    *,
    suffix: str = "",
    **extra: str,
) -> Completion:
    """The one way a step ends ``failed`` on an error the engine caught (its state
    does not load, the class cannot be built, ``handle`` failed, the database refused
    every outcome): ``last_error`` says what and why, the error goes in the history,
    and — like any progressing outcome — the signals the step was woken by and saw
    are consumed (§6)."""
    text = describe_error(error)
    return Completion(
        claim.id,
        claim.token,
        "stop",
        error=f"{what}: {text}{suffix}" if what else text,
        consume=claim.awaits,
        seen=seen_ids(signals),
        error_entry=error_entry(error, claim.step, claim.attempt, **extra),
    )


def _awaited(claim: Claim, signals: tuple[Signal, ...]) -> tuple[Signal, ...]:
    """``ctx.awaited`` (§19): the snapshot's signals under the set the row was woken from."""
    if not claim.awaits or not signals:
        return ()
    names = claim.awaits
    return tuple(s for s in signals if s.name in names)


def _may_chain(claim: Claim, completion: Completion, may_keep: Callable[[int], bool]) -> bool:
    """Whether a step's outcome may keep the claim and run the next step at once."""
    return (
        completion.kind == "next"
        and not completion.delay  # a sleep goes back to the queue, holding nothing
        and claim.partition_key is None
        and claim.rate_limit is None
        and not completion.rate_limit
        and may_keep(claim.priority)
    )


def _chained(claim: Claim, completion: Completion, inbox_text: str | None) -> Claim:
    """The claim the next step of a chain runs on: the committed step and state, the
    inbox the commit returned."""
    return Claim(
        id=claim.id,
        fsm=claim.fsm,
        fsm_version=claim.fsm_version,
        step=completion.step or claim.step,
        state_text=completion.state if completion.state is not None else claim.state_text,
        attempt=0,
        awaits=None,
        priority=claim.priority,
        partition_key=claim.partition_key,
        inbox_text=inbox_text,
        childs_text=claim.childs_text,  # terminal children cannot change under a chain
        token=claim.token,
        rate_limit=claim.rate_limit,
        trace_context=claim.trace_context,
    )
