"""Step methods, generic machines and the state source order (SPEC §26)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import pytest

import gen_durable as gd
from gen_durable.graph import mermaid, transitions
from gen_durable.testing import drain

S = TypeVar("S")


class Parcel(gd.State):
    sku: str = ""
    hops: list[str] = []


class Ship(gd.FSM[Parcel], initial="pack"):
    @gd.step
    async def pack(self, ctx: gd.Context[Parcel]) -> gd.Outcome[Parcel]:
        return gd.Next(Ship.label, ctx.state.model_copy(update={"hops": [ctx.step]}))

    @gd.step
    def label(self, ctx: gd.Context[Parcel]) -> gd.Outcome[Parcel]:
        hops = [*ctx.state.hops, ctx.step]
        return gd.Next("send", ctx.state.model_copy(update={"hops": hops}))

    @gd.step
    async def send(self, ctx: gd.Context[Parcel]) -> gd.Outcome[Parcel]:
        return gd.Done([*ctx.state.hops, ctx.step])


async def test_step_methods_run_by_reference_and_by_name(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        order = await engine.insert(Ship, state=Parcel(sku="A1"))
        result = await drain(engine)
        row = await engine.get(order)
    assert row is not None and row.status == "done"
    # ctx.step names each step, and the sync `label` ran in between the async ones.
    assert row.result == ["pack", "label", "send"]
    assert result.steps == 3 and result["next"] == 2 and result["done"] == 1


class Typo(gd.FSM, initial="a"):
    @gd.step
    def a(self, ctx: gd.Context) -> gd.Outcome:
        target = "shp"  # computed: the class check cannot see it
        return gd.Next(target, ctx.state)

    def handle(self, error: Exception, ctx: gd.Context) -> gd.Outcome:
        return gd.Done(f"handled {type(error).__name__}: {error}")


async def test_unknown_step_at_run_time_is_invalid_outcome_through_handle(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        order = await engine.insert(Typo)
        await drain(engine)
        row = await engine.get(order)
    assert row is not None and row.status == "done"
    assert row.result.startswith("handled InvalidOutcome")
    assert "no step 'shp'" in row.result


async def test_insert_at_an_unknown_step_is_refused_before_writing(
    make_engine: Callable[..., gd.Engine], conn: Any
) -> None:
    engine = make_engine(queues={})
    async with engine:
        with pytest.raises(gd.ConfigurationError, match="no step 'nope'"):
            await engine.insert(Ship, step="nope")
        # A method reference is a step too.
        order = await engine.insert(Ship, step=Ship.send, state=Parcel())
        row = await engine.get(order)
    assert row is not None and row.step == "send"
    schema = engine.config.schema
    cur = await conn.execute(f'SELECT count(*) FROM "{schema}".gen_durable')
    assert (await cur.fetchone())[0] == 1


def test_initial_must_name_a_step_method() -> None:
    with pytest.raises(gd.InvalidMachine, match=r"initial step 'start' is not a @gd\.step"):

        class NoStart(gd.FSM):
            @gd.step
            def begin(self, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()


def test_a_reference_to_a_missing_step_is_refused_at_class_creation() -> None:
    with pytest.raises(gd.InvalidMachine, match=r"Dangling\.go returns next to Dangling\.shp"):

        class Dangling(gd.FSM, initial="go"):
            @gd.step
            def go(self, ctx: gd.Context) -> gd.Outcome:
                return gd.Next(Dangling.shp, ctx.state)  # type: ignore[attr-defined]

    with pytest.raises(gd.InvalidMachine, match=r"children to Fan\.joined"):

        class Fan(gd.FSM, initial="go"):
            @gd.step
            def go(self, ctx: gd.Context) -> gd.Outcome:
                return gd.ScheduleChilds(Fan.joined, [])  # type: ignore[attr-defined]


def test_forms_do_not_mix_and_jobs_take_no_step_methods() -> None:
    with pytest.raises(gd.InvalidMachine, match=r"mixes @gd\.step methods"):

        class Mixed(gd.FSM):
            @gd.step
            def start(self, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()

            def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()

    with pytest.raises(gd.InvalidMachine, match=r"@gd\.step methods are for gd\.FSM"):

        class JobWithSteps(gd.Job):
            @gd.step
            def start(self, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()

            def perform(self, args: Any) -> None:
                return None

    with pytest.raises(gd.InvalidMachine, match="'handle' is reserved"):

        class Reserved(gd.FSM):
            @gd.step
            def start(self, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()

            @gd.step
            def handle(self, error: Exception, ctx: gd.Context) -> gd.Outcome:  # type: ignore[override]
                return gd.Done()

    with pytest.raises(gd.InvalidMachine, match=r"takes \(self, ctx\)"):

        class Arity(gd.FSM):
            @gd.step
            def start(self) -> gd.Outcome:
                return gd.Done()


class Explicit(gd.State):
    a: int = 1


class FromGeneric(gd.State):
    b: int = 2


class Plain(TypedDict):
    c: int


def test_state_source_order() -> None:
    class ByKeyword(gd.FSM[FromGeneric], state=Explicit):
        class State(gd.State):
            n: int = 0

        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done()

    class ByNested(gd.FSM[FromGeneric]):
        class State(gd.State):
            n: int = 0

        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done()

    class ByGeneric(gd.FSM[FromGeneric]):
        def step(self, step: str, ctx: gd.Context[FromGeneric]) -> gd.Outcome:
            return gd.Done()

    class ByDict(gd.FSM[Plain]):
        def step(self, step: str, ctx: gd.Context[Plain]) -> gd.Outcome:
            return gd.Done()

    class Untyped(gd.FSM):
        def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
            return gd.Done()

    class Child(ByGeneric):
        pass

    class JobState(gd.Job[FromGeneric]):
        def perform(self, args: FromGeneric) -> int:
            return args.b

    assert ByKeyword.__gd_state__ is Explicit
    assert ByNested.__gd_state__ is ByNested.State
    assert ByGeneric.__gd_state__ is FromGeneric
    assert ByDict.__gd_state__ is None and Untyped.__gd_state__ is None
    assert Child.__gd_state__ is FromGeneric
    assert JobState.__gd_state__ is FromGeneric
    assert isinstance(ByGeneric.load_state('{"b": 5}'), FromGeneric)

    with pytest.raises(gd.InvalidMachine, match="by a string"):

        class Quoted(gd.FSM["Explicit"]):
            def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()

    class Base(gd.FSM[S], abstract=True):
        pass

    class Concrete(Base[FromGeneric]):
        def step(self, step: str, ctx: gd.Context[FromGeneric]) -> gd.Outcome:
            return gd.Done()

    assert Base.__gd_state__ is None and Concrete.__gd_state__ is FromGeneric

    with pytest.raises(gd.InvalidMachine, match="must be a pydantic model"):

        class Wrong(gd.FSM[int]):
            def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
                return gd.Done()


def test_graph_reads_the_transitions_of_the_source() -> None:
    class Review(gd.FSM, initial="draft"):
        @gd.step
        def draft(self, ctx: gd.Context) -> gd.Outcome:
            if ctx.signals:
                return gd.Next(Review.publish, ctx.state)
            return gd.Await("approved", ctx.state)

        @gd.step
        def publish(self, ctx: gd.Context) -> gd.Outcome:
            if not ctx.state:
                return gd.Stop("empty")
            return gd.ScheduleChilds("notified", [])

        @gd.step
        def notified(self, ctx: gd.Context) -> gd.Outcome:
            return gd.Done()

    kinds = [(t.source, t.kind, t.target) for t in transitions(Review)]
    assert ("draft", "next", "publish") in kinds and ("draft", "await", "draft") in kinds
    assert ("publish", "children", "notified") in kinds and ("notified", "done", None) in kinds
    text = mermaid(Review)
    assert text.startswith("stateDiagram-v2\n    [*] --> draft\n")
    assert "    draft --> publish: Next\n" in text
    assert "    draft --> draft: Await approved\n" in text
    assert "    publish --> [*]: Stop\n" in text
    assert "    publish --> notified: ScheduleChilds\n" in text


def test_a_class_without_source_is_not_refused() -> None:
    namespace: dict[str, Any] = {"gd": gd}
    exec(
        "class Dyn(gd.FSM, initial='a', name='test_step_methods.Dyn'):\n"
        "    @gd.step\n"
        "    def a(self, ctx):\n"
        "        return gd.Next(Dyn.missing, ctx.state)\n",
        namespace,
    )
    assert namespace["Dyn"].__gd_steps__ == {"a": False}
    assert transitions(namespace["Dyn"]) == []


async def test_a_row_left_at_a_step_the_class_no_longer_has_fails_through_handle(
    make_engine: Callable[..., gd.Engine], conn: Any
) -> None:
    engine = make_engine(queues={})
    async with engine:
        order = await engine.insert(Ship, state=Parcel())
        # As if a deploy renamed the step while this row was in flight.
        await conn.execute(f"UPDATE \"{engine.config.schema}\".gen_durable SET step = 'gone'")
        ran = await drain(engine)
        row = await engine.get(order)
    assert ran["stop"] == 1
    assert row is not None and row.status == "failed"
    assert row.last_error is not None and "has no step 'gone'" in row.last_error
    assert row.errors[0]["type"] == "gen_durable.errors.InvalidOutcome"
