"""Machine definitions, the registry and engine options — pure logic, no database
(SPEC §11–§13, §15)."""

from __future__ import annotations

import types
from typing import Any

import pydantic
import pytest

import gen_durable as gd
from gen_durable._runtime.executor import Claim, encode
from gen_durable.registry import REGISTRY, Registry, resolve


def test_keywords_and_defaults() -> None:
    class Checkout(gd.FSM, queue="checkout", version=3, initial="begin"):
        class State(gd.State):
            order: int

        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done()

    assert Checkout.__gd_name__ == f"{__name__}.test_keywords_and_defaults.<locals>.Checkout"
    assert (Checkout.__gd_version__, Checkout.__gd_queue__, Checkout.__gd_initial__) == (
        3,
        "checkout",
        "begin",
    )
    assert Checkout.__gd_state__ is Checkout.State
    assert REGISTRY.get(Checkout.__gd_name__, 3) is Checkout

    class Plain(gd.FSM, name="plain.machine"):
        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done()

    assert (Plain.__gd_name__, Plain.__gd_version__, Plain.__gd_queue__) == (
        "plain.machine",
        1,
        "default",
    )
    assert Plain.__gd_state__ is None and Plain.__gd_initial__ == "start"


def test_explicit_state_keyword() -> None:
    class Model(pydantic.BaseModel):
        x: int = 1

    class M(gd.FSM, state=Model):
        def step(self, step: str, ctx: gd.Context[Model]) -> gd.Outcome:
            return gd.Done()

    assert M.__gd_state__ is Model
    assert M.load_state('{"x": 5}') == Model(x=5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: type("Neither", (gd.FSM,), {}), "must define step"),
        (
            lambda: type(
                "Both", (gd.FSM,), {"step": lambda s, a, c: None, "perform": lambda s, a: None}
            ),
            "both step and perform",
        ),
        (lambda: type("JobNoPerform", (gd.Job,), {}), "must define perform"),
        (
            lambda: type("BadState", (gd.FSM,), {"State": dict, "step": lambda s, a, c: None}),
            "must subclass gd.State",
        ),
        (
            lambda: types.new_class(
                "EmptyQueue",
                (gd.FSM,),
                {"queue": ""},
                lambda ns: ns.update(step=lambda s, a, c: None),
            ),
            "queue must be a non-empty str",
        ),
    ],
)
def test_definition_mistakes_raise_invalid_machine(make: Any, message: str) -> None:
    with pytest.raises(gd.InvalidMachine, match=message):
        make()


def test_bad_keywords() -> None:
    with pytest.raises(gd.InvalidMachine, match="unknown class keyword"):

        class A(gd.FSM, colour="red"):  # type: ignore[call-arg]
            def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
                return gd.Done()

    with pytest.raises(gd.InvalidMachine, match="version must be an int"):

        class B(gd.FSM, version=0):
            def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
                return gd.Done()

    with pytest.raises(gd.InvalidMachine, match=r"max_attempts applies to gd\.Job"):

        class C(gd.FSM, max_attempts=3):
            def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
                return gd.Done()


def test_abstract_base_and_inherited_step() -> None:
    class Base(gd.FSM, abstract=True, queue="q"):
        def helper(self) -> int:
            return 1

    class Concrete(Base):
        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done(self.helper())

    assert Concrete.__gd_queue__ == "q"
    with pytest.raises(gd.InvalidMachine, match="abstract"):
        Registry([Base])


def test_old_and_new_versions_side_by_side() -> None:
    class V1(gd.FSM, name="versioned.M", version=1):
        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done("v1")

    class V2(gd.FSM, name="versioned.M", version=2):
        def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
            return gd.Done("v2")

    explicit = Registry([V1])
    assert resolve(explicit, "versioned.M", 1) is V1
    assert resolve(explicit, "versioned.M", 2) is V2
    assert resolve(explicit, "versioned.M", 3) is None


def test_import_fallback_accepts_only_matching_machines() -> None:
    # A default name is an import path; a miss imports it.
    name = "tests.fallback_target.Target"
    assert resolve(Registry(), name, 1) is not None
    # Something found by name that is not a machine is never executed.
    assert resolve(Registry(), "tests.fallback_target.not_a_machine", 1) is None
    assert resolve(Registry(), "os.path.join", 1) is None
    # Version mismatch: refused.
    assert resolve(Registry(), name, 7) is None
    assert resolve(Registry(), "no_such_module_anywhere.M", 1) is None


class Typed(gd.FSM):
    class State(gd.State):
        n: int

    def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        return gd.Done()


class OtherModel(gd.State):
    n: int


def _claim() -> Claim:
    return Claim(1, "f", 1, "start", "{}", 0, "go", 0, None, None, None, "tok")


@pytest.mark.parametrize(
    "outcome",
    [
        None,
        ("next", "x"),
        "done",
        gd.Next(""),
        gd.Next("b", OtherModel(n=1)),
        gd.Next("b", {"n": "not an int"}),
        gd.Next("b", 42),
        gd.Replay(delay=-1),
        gd.Await(""),
        gd.Done(object()),
        gd.Done(float("nan")),
        gd.Done({"s": "nul\x00"}),
        gd.Next("nul\x00"),
        gd.ScheduleChilds("b", "not a list"),
        gd.ScheduleChilds("b", [dict]),
    ],
)
def test_bad_outcomes_raise_inside_the_guard(outcome: Any) -> None:
    with pytest.raises(
        (gd.InvalidOutcome, gd.EncodingError, pydantic.ValidationError, gd.ConfigurationError)
    ):
        encode(outcome, _claim(), Typed, ())


def test_outcome_encoding() -> None:
    c = encode(gd.Next("b", Typed.State(n=2)), _claim(), Typed, ())
    assert (c.kind, c.step, c.state, c.consume) == ("next", "b", '{"n":2}', "go")
    c = encode(gd.Next("b", {"n": 3}), _claim(), Typed, ())
    assert c.state == '{"n":3}'
    c = encode(gd.Replay(delay=__import__("datetime").timedelta(seconds=1.5)), _claim(), Typed, ())
    assert (c.kind, c.delay, c.state) == ("replay", 1.5, None)
    c = encode(gd.Stop(ValueError("x\x00y")), _claim(), Typed, ())
    assert c.error == "ValueError: x\\x00y"  # typed, and storable
    c = encode(gd.Stop("plain x\x00y"), _claim(), Typed, ())
    assert c.error == "plain x\\x00y"
    c = encode(gd.Await("go"), _claim(), Typed, ())
    assert (c.awaits, c.consume) == ("go", None)


def test_insert_state_validated_before_anything_is_written() -> None:
    from gen_durable.client import build_one

    with pytest.raises(pydantic.ValidationError):
        build_one(Typed, {"state": {"n": "x"}})
    with pytest.raises(gd.ConfigurationError, match="unknown insert option"):
        build_one(Typed, {"state": {"n": 1}, "priorty": 1})
    with pytest.raises(gd.ConfigurationError, match="unique_scope"):
        build_one(Typed, {"state": {"n": 1}, "unique_key": "k", "unique_scope": ["bogus"]})
    with pytest.raises(gd.ConfigurationError, match="timezone-aware"):
        import datetime as dt

        build_one(Typed, {"state": {"n": 1}, "eligible_at": dt.datetime(2030, 1, 1)})
    with pytest.raises(gd.EncodingError, match="NUL"):
        build_one(Typed, {"state": {"n": 1}, "partition_key": "a\x00b"})
    rows = build_one(Typed, {"state": {"n": 1}, "unique_key": "ké"})
    assert rows.unique_key == ["ké".encode()]
    assert rows.unique_scope == ["{runnable,executing,awaiting_signal,awaiting_children}"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"queues": {"default": 0}}, "concurrency"),
        ({"queues": ["default"]}, "mapping"),
        ({"lease_ttl": -1}, "lease_ttl"),
        ({"lease_ttl": 10, "heartbeat_interval": 10}, "heartbeat_interval"),
        ({"poll_interval": 2, "max_poll_interval": 1}, "max_poll_interval"),
        ({"prefetch": -1}, "prefetch"),
        ({"min_demand": 0}, "min_demand"),
        ({"min_demand": 50, "queues": {"q": 10}}, "never pick"),
        ({"drain_timeout": "5"}, "drain_timeout"),
        ({"reap_interval": float("nan")}, "reap_interval"),
        ({"schema": ""}, "schema"),
    ],
)
def test_engine_options_validated_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(gd.ConfigurationError, match=message):
        gd.Engine("postgresql://localhost/none", **options)


def test_unknown_engine_keyword_is_refused_by_the_signature() -> None:
    """Options are explicit keywords (mypy and editors see a misspelling); at run time
    an unknown one is Python's TypeError naming it, before anything connects."""
    with pytest.raises(TypeError, match="bogus"):
        gd.Engine("postgresql://localhost/none", bogus=1)  # type: ignore[call-arg]


def test_dsn_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEN_DURABLE_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(gd.ConfigurationError, match="embedded"):
        gd.Engine()
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-database-url/x")
    assert gd.Engine().config.dsn == "postgresql://from-database-url/x"
    monkeypatch.setenv("GEN_DURABLE_DSN", "postgresql://from-gd/x")
    assert gd.Engine().config.dsn == "postgresql://from-gd/x"
