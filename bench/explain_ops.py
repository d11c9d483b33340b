"""The operator statements' plans (SPEC §21, §22) on the seeded table: ``list`` with
its common filters and one retention batch. Part of ``make explain``.

The filtered statements always run with ``plan_cache_mode = force_custom_plan`` (the
absent filters fold away at planning), so only custom plans are measured. Verdicts:
no sequential scan of the instance table, and the rows read stay proportional to the
page (or the batch), not to the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from explain import Check, Measure, Plan, Session, render, scans, visited

from gen_durable._control import _page
from gen_durable._db.statements.listing import LIST, SWEEP
from gen_durable.filters import build_filter

PAGE = 100
GC_BATCH = 1000
# A page of a filter that matches a share p of the table walks about PAGE / p rows of
# the id index; this many times the page is what the common filters may read.
LIST_READ_FACTOR = 40


@dataclass
class OpsCase:
    key: str
    title: str
    filters: dict[str, Any]
    why: str


def _first(s: Session, query: str) -> Any:
    row = s.conn.execute(query.replace("{s}", f'"{s.q.schema}"')).fetchone()
    assert row is not None, query
    return row[0]


def list_cases(s: Session) -> list[OpsCase]:
    parent = _first(s, "SELECT parent_id FROM {s}.gen_durable WHERE parent_id IS NOT NULL LIMIT 1")
    key = _first(
        s,
        "SELECT partition_key FROM {s}.gen_durable"
        " WHERE status = 'runnable' AND partition_key IS NOT NULL LIMIT 1",
    )
    return [
        OpsCase(
            "list.failed",
            "`list(status='failed')`",
            {"status": "failed"},
            "Newest failed rows: a walk of `gen_durable_terminal` for the status, or of the"
            " primary key backwards with the status as a filter, whichever the planner"
            " expects to be cheaper; either way no row outside the status range is read"
            " beyond the page's share of the table.",
        ),
        OpsCase(
            "list.runnable_queue",
            "`list(status='runnable', queue='emails')`",
            {"status": "runnable", "queue": "emails"},
            "Live statuses sit in the partial hot indexes (`gen_durable_pick` holds the"
            " runnable rows by queue); the page is read from there or from the primary key"
            " backwards.",
        ),
        OpsCase(
            "list.machine",
            "`list(machine='report.build')`",
            {"machine": "report.build"},
            "No index on the machine name (it would cost every step a write): the primary"
            " key is walked backwards and the name filtered, so a page costs about"
            " PAGE / (the machine's share of the table) rows. Cheap for the machines that"
            " make up the table; for a rare machine, add a status.",
        ),
        OpsCase(
            "list.parent",
            "`list(parent=...)`",
            {"parent": parent},
            "`gen_durable_parent` returns exactly the children; a sort by id of that"
            " handful gives the page.",
        ),
        OpsCase(
            "list.partition_key",
            "`list(status='runnable', partition_key=...)`",
            {"status": "runnable", "partition_key": key},
            "`gen_durable_partition_queue` holds the runnable rows of each key.",
        ),
    ]


def _list_checks(explain: Plan) -> list[Check]:
    plan = explain["Plan"]
    seqs = [n for n in scans(plan) if n["Node Type"] == "Seq Scan"]
    read = sum(visited(n) for n in scans(plan))
    limit = LIST_READ_FACTOR * PAGE
    return [
        Check("no sequential scan", not seqs, "every access goes through an index"),
        Check("reads bounded by the page", read <= limit, f"{read:.0f} rows read (limit {limit})"),
    ]


def _gc_checks(explain: Plan, deleted: int) -> list[Check]:
    plan = explain["Plan"]
    terminal = [n for n in scans(plan) if n.get("Index Name") == "gen_durable_terminal"]
    read = sum(visited(n) for n in terminal)
    seqs = [n for n in scans(plan) if n["Node Type"] == "Seq Scan"]
    return [
        Check("walks gen_durable_terminal", bool(terminal) and not seqs, "oldest first"),
        Check(
            "one batch reads O(batch)",
            deleted > 0 and read <= 3 * GC_BATCH,
            f"{read:.0f} terminal entries read for {deleted} deleted (limit {3 * GC_BATCH})",
        ),
    ]


def measure_ops(dsn: str, schema: str) -> tuple[list[Measure], dict[str, str]]:
    s = Session(dsn, schema)
    measures: list[Measure] = []
    why: dict[str, str] = {}
    try:
        for case in list_cases(s):
            params = _page(build_filter(**case.filters), None, PAGE)
            m = _run(s, case.key, case.title, LIST.bind(schema, params), _list_checks)
            measures.append(m)
            why[case.key] = case.why
        sweep = SWEEP["done"].bind(schema, {"age": 0.0, "limit": GC_BATCH})
        title = f"retention batch (`gc.sweep.done`, {GC_BATCH} rows)"
        m = _run(s, "gc.done", title, sweep, lambda e: _gc_checks(e, e["Plan"]["Actual Rows"]))
        measures.append(m)
        why["gc.done"] = (
            "The status is part of the statement's text, so the planner proves the"
            " predicate of the partial `gen_durable_terminal` and walks it from the oldest"
            " row of the status; `SKIP LOCKED` rows and children of live parents are"
            " stepped over, and `LIMIT` stops the walk once the batch is locked."
        )
    finally:
        s.close()
    return measures, why


def _run(s: Session, key: str, title: str, stmt: Any, checks: Any) -> Measure:
    m = Measure(key, title)
    for _warm_up in range(2):
        with s.rolled_back():
            explain = s.explain(stmt, "custom")
    m.explains["custom"] = explain
    m.checks["custom"] = checks(explain)
    ok = all(c.ok for c in m.checks["custom"])
    print(f"  {'PASS' if ok else 'FAIL'}  {title}", flush=True)
    return m


def verdicts(measures: list[Measure]) -> list[Check]:
    return [
        Check(
            f"{m.title} (custom)",
            all(c.ok for c in m.checks["custom"]),
            "; ".join(c.detail for c in m.checks["custom"]),
        )
        for m in measures
    ]


def report(measures: list[Measure], why: dict[str, str]) -> str:
    lines = [
        "",
        "## Operator reads",
        "",
        "`list`, the bulk forms and the retention sweep (SPEC §21, §22), custom plans"
        " (they always run with `force_custom_plan`).",
        "",
        "Which filters are index-driven: `status` (the partial hot indexes for live"
        " statuses, `gen_durable_terminal` for terminal ones), `parent`"
        " (`gen_durable_parent`), `partition_key` with a live status (the partition"
        " indexes), and the page order itself (the primary key, walked backwards)."
        " `machine`, `queue`, `step` and the time bounds have no index of their own: the"
        " primary key is walked newest first and the filter applied, so a page costs"
        " about its size divided by the share of the table that matches — cheap for the"
        " common values, and combined with a status for rare ones. `error` (a substring"
        " of `last_error`) and `unique_key` on finished rows always filter row by row:"
        " an operator's search, never on the hot path, and bounded per page by `limit`"
        " only when matches are common. Indexes for them would be written on every"
        " step's update.",
        "",
        "| statement | execution | verdict |",
        "|---|---|---|",
    ]
    for m in measures:
        e = m.explains["custom"]
        ok = all(c.ok for c in m.checks["custom"])
        verdict = "PASS" if ok else "**FAIL**"
        lines.append(f"| {m.title} | {e['Execution Time']:.2f} ms | {verdict} |")
    lines.append("")
    for m in measures:
        lines += [f"### {m.title}", "", why[m.case], ""]
        for c in m.checks["custom"]:
            lines.append(f"- {'PASS' if c.ok else '**FAIL**'} {c.name}: {c.detail}")
        lines += ["", "```", render(m.explains["custom"]), "```", ""]
    return "\n".join(lines)
