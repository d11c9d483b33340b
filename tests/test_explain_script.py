"""The EXPLAIN evidence script (bench/explain.py) and its seeder (bench/_seed.py).

The seeder must build the population its docstring describes, the plan checks must
tell an index lookup from a table scan on real plans, and the script must run end to
end on a small table with every verdict passing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psycopg

import gen_durable as gd
from gen_durable._db.queries import Queries
from gen_durable.client import build_insert

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import explain  # noqa: E402
from _seed import seed  # noqa: E402


def _scalar(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_seed_builds_the_population_it_describes(dsn: str, schema: str) -> None:
    table = f'"{schema}".gen_durable'
    with psycopg.connect(dsn, autocommit=True) as c:
        counts = seed(c, schema, 4000)
        assert counts["rows"] == 4000
        by_status = counts["by_status"]
        assert set(by_status) == {
            "runnable",
            "executing",
            "awaiting_signal",
            "awaiting_children",
            "done",
            "failed",
        }
        terminal = by_status["done"] + by_status["failed"]
        assert 0.66 <= terminal / 4000 <= 0.74, by_status
        queues = {"default", "emails", "reports", "slow", "fanout"}
        assert set(counts["runnable_by_queue"]) == queues
        assert counts["expired_leases"] > 0
        assert counts["children"] > 0
        assert counts["signals"] > 0
        # A waiting parent counts exactly its live children.
        assert (
            _scalar(
                c,
                f"SELECT count(*) FROM {table} p WHERE status = 'awaiting_children' AND"
                f" children_pending <> (SELECT count(*) FROM {table} k WHERE k.parent_id = p.id"
                " AND k.status NOT IN ('done', 'failed'))",
            )
            == 0
        )
        # A woken row finds the signal it was woken by in its inbox.
        assert (
            _scalar(
                c,
                f"SELECT count(*) FROM {table} g WHERE status = 'runnable' AND awaits IS NOT NULL"
                f' AND NOT EXISTS (SELECT 1 FROM "{schema}".signals s WHERE s.target_id = g.id'
                " AND s.name = ANY (g.awaits))",
            )
            == 0
        )
        assert (
            _scalar(
                c,
                f"SELECT count(DISTINCT partition_key) FROM {table}"
                " WHERE status = 'executing' AND partition_key IS NOT NULL",
            )
            > 0
        )
        # Seeding again appends (keys do not collide) and the identity moves on.
        assert seed(c, schema, 1000)["rows"] == 5000
        rows = build_insert([gd.Spec(explain.ProcessOrder, args={"order": 1})])
        stmt = Queries(schema).insert(rows)
        row = c.execute(stmt.query, stmt.params).fetchone()
        assert row is not None
        assert row[0] == [5001]


def test_plan_checks_tell_primary_key_lookups_from_table_scans(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        seed(c, schema, 2000)
    heartbeat = {case.key: case for case in explain.cases(20)}["heartbeat"]
    forced = {
        "lookup": (
            "enable_seqscan",
            "enable_bitmapscan",
            "enable_hashjoin",
            "enable_mergejoin",
            "enable_material",
        ),
        "scan": ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"),
    }
    verdicts: dict[str, dict[str, bool]] = {}
    session = explain.Session(dsn, schema)
    try:
        for label, settings in forced.items():
            with session.rolled_back():
                for setting in settings:
                    session.conn.execute(f"SET LOCAL {setting} = off")
                stmt, expected = heartbeat.setup(session)
                plan = session.explain(stmt, "custom")
            assert expected == 20
            verdicts[label] = {c.name: c.ok for c in explain.check("heartbeat", plan, expected, 20)}
    finally:
        session.close()
    assert verdicts["lookup"] == {
        "index access only": True,
        "work bounded by the rows at stake": True,
        "primary-key lookups": True,
        "touches the claimed rows": True,
    }
    assert verdicts["scan"] == {
        "index access only": False,
        "work bounded by the rows at stake": False,
        "primary-key lookups": False,
        "touches the claimed rows": True,
    }


def test_script_runs_end_to_end_and_every_verdict_passes(dsn: str, tmp_path: Path) -> None:
    report = tmp_path / "explain.md"
    verdicts_file = tmp_path / "verdicts.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "explain.py"),
            "--dsn",
            dsn,
            "--rows",
            "20000",
            "--batch",
            "20",
            "--scaling-sizes",
            "5000",
            "--repeat",
            "3",
            "--output",
            str(report),
            "--json",
            str(verdicts_file),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = json.loads(verdicts_file.read_text())
    assert [v for v in verdicts if not v["ok"]] == []
    names = {v["name"] for v in verdicts}
    for case in explain.cases(20):
        for mode in explain.MODES:
            assert f"{case.title} ({mode})" in names
    assert {"pick flat (custom plan)", "pick flat (generic plan)"} <= names
    text = report.read_text()
    assert "| **FAIL** |" not in text and "Failed checks" not in text
    assert "Index Scan using gen_durable_pick on gen_durable" in text
    assert "| 5,000 | custom |" in text and "| 20,000 | generic |" in text
    # The throwaway database is gone.
    match = re.search(r"throwaway database (\S+)", proc.stdout)
    assert match, proc.stdout
    with psycopg.connect(dsn, autocommit=True) as c:
        assert _scalar(c, f"SELECT count(*) FROM pg_database WHERE datname = '{match[1]}'") == 0
