"""OpenTelemetry tracing (SPEC §25) with the SDK's in-memory exporter: a span per step
parented on the inserting trace and, after a wake-up, on the signalling one; the
exception recorded; the application's provider used, never replaced; and the trace
column's migration with instances in flight."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import gen_durable as gd
from gen_durable import _trace, tracing
from gen_durable._db.schema import TRACE_CONTEXT_UP, VERSIONS
from tests.conftest import FAST, wait_for
from tests.dashboard_machines import Broken, Waiter

TRACE_VERSION = VERSIONS.index(next(v for v in VERSIONS if v[0] == TRACE_CONTEXT_UP)) + 1


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(provider)
    try:
        yield provider, exporter
    finally:
        tracing.uninstrument()
    assert _trace.TRACER is None and _trace.CAPTURE is None


def steps(exporter: InMemorySpanExporter, iid: int) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans()
        if s.name == "gen_durable.step" and s.attributes and s.attributes["gen_durable.id"] == iid
    ]  # fmt: skip


async def test_steps_follow_the_insert_and_the_waking_signal(make_engine: Any, spans: Any) -> None:
    provider, exporter = spans
    app = provider.get_tracer("app")
    engine = make_engine(queues={"default": 2}, fsms=[Waiter])
    await engine.start()
    with app.start_as_current_span("POST /orders") as web:
        waiter = await engine.insert(Waiter)
    await wait_for(lambda: _status(engine, waiter, "awaiting_signal"), timeout=30)
    with app.start_as_current_span("POST /payments") as hook:
        assert await engine.signal(waiter, "go", {"paid": True})
    await engine.wait(waiter, timeout=30)
    await wait_for(lambda: _finished(exporter, waiter, 2), timeout=30)
    first, second = steps(exporter, waiter)
    assert first.parent is not None and second.parent is not None
    assert first.context.trace_id == web.get_span_context().trace_id
    assert first.parent.span_id == web.get_span_context().span_id
    assert second.context.trace_id == hook.get_span_context().trace_id
    assert second.parent.span_id == hook.get_span_context().span_id
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gen_durable.outcome"] == "await"
    assert second.attributes["gen_durable.fsm"] == Waiter.__gd_name__
    assert second.attributes["gen_durable.queue"] == "default"
    assert trace.get_tracer_provider() is not provider  # never installed globally


async def test_untraced_insert_runs_a_root_span_and_errors_are_recorded(
    make_engine: Any, spans: Any, conn: Any, schema: str
) -> None:
    _, exporter = spans
    engine = make_engine(queues={"default": 2}, fsms=[Broken])
    await engine.start()
    broken = await engine.insert(Broken, args={"why": "boom"})
    await engine.wait(broken, timeout=30)
    cur = await conn.execute(
        f'SELECT trace_context FROM "{schema}".gen_durable WHERE id = %s', (broken,)
    )
    assert await cur.fetchone() == (None,)
    await wait_for(lambda: _finished(exporter, broken, 1), timeout=30)
    (span,) = steps(exporter, broken)
    assert span.parent is None
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


async def test_off_stores_nothing_and_makes_no_spans(
    make_engine: Any, conn: Any, schema: str
) -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = make_engine(queues={"default": 2}, fsms=[Waiter])
    await engine.start()
    with provider.get_tracer("app").start_as_current_span("outside"):
        waiter = await engine.insert(Waiter)
    await wait_for(lambda: _status(engine, waiter, "awaiting_signal"), timeout=30)
    cur = await conn.execute(f'SELECT trace_context FROM "{schema}".gen_durable')
    assert await cur.fetchall() == [(None,)]
    assert [s.name for s in exporter.get_finished_spans()] == ["outside"]


async def _finished(exporter: InMemorySpanExporter, iid: int, n: int) -> bool:
    return len(steps(exporter, iid)) == n


async def _status(engine: gd.Engine, iid: int, status: str) -> bool:
    row = await engine.get(iid)
    return row is not None and row.status == status


async def test_trace_column_migrates_with_instances_in_flight(dsn: str) -> None:
    schema = "t_" + uuid.uuid4().hex[:12]
    await gd.migrate(dsn, schema=schema, version=TRACE_VERSION - 1)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(
                f'INSERT INTO "{schema}".gen_durable (fsm, step, status, awaits) '
                "VALUES (%s, 'start', 'awaiting_signal', ARRAY['go'])",
                (Waiter.__gd_name__,),
            )
        await gd.migrate(dsn, schema=schema, version=TRACE_VERSION)
        engine = gd.Engine(dsn, schema=schema, queues={"default": 2}, fsms=[Waiter], **FAST)
        async with engine:
            assert await engine.signal(1, "go", {"n": 1})
            done = await engine.wait(1, timeout=30)
        assert done.result == {"payload": {"n": 1}}
        await gd.migrate_down(dsn, schema=schema, version=TRACE_VERSION - 1)
        with psycopg.connect(dsn, autocommit=True) as c:
            cols = c.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = 'gen_durable' AND column_name = 'trace_context'",
                (schema,),
            ).fetchone()
            assert cols == (0,)
            assert c.execute(f'SELECT status::text FROM "{schema}".gen_durable').fetchall() == [
                ("done",)
            ]
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
