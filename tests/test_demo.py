"""``gen-durable demo`` on the test database: it must reach its end state, print the
summary and the inspection commands, and be runnable again on the same schema."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gen_durable import demo as demo_module
from gen_durable.cli import main

ROOT = Path(__file__).resolve().parent.parent


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gen_durable", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def demo_schema(dsn: str) -> Iterator[str]:
    name = "t_demo_" + uuid.uuid4().hex[:10]
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def counts(dsn: str, schema: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT fsm, status::text, count(*) FROM "{schema}".gen_durable GROUP BY 1, 2'
        ).fetchall()
    return {(fsm, status): n for fsm, status, n in rows}


def test_demo_reaches_its_end_state_and_runs_again(dsn: str, demo_schema: str) -> None:
    for _ in range(2):  # a second run starts from fresh tables
        proc = demo("--dsn", dsn, "--schema", demo_schema, "--size", "12")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert "Instances by status" in out and "FAILED" not in out
        assert out.count("[ok]") == 11
        assert "12/12 orders done, no instance left unfinished" in out
        # Order 5 (n % 10 == 5): its webhook started it (signal-with-start).
        assert "1 webhook(s) arrived before their order: signal-with-start" in out
        assert re.search(r"steps run: \d+ in [\d.]+s \(\d+ steps/s,", out)
        assert f"gen-durable status --dsn {shlex.quote(dsn)} --schema {demo_schema}" in out
        assert re.search(
            rf"gen-durable show \d+ --dsn {re.escape(shlex.quote(dsn))} --schema {demo_schema}",
            out,
        )
        assert f"psql {shlex.quote(dsn)} -c " in out
        assert "1 unpaid order(s) cancelled themselves at their payment deadline" in out
        # Orders 3 and 10 each hold one out-of-stock item (order n with n % 7 == 3);
        # order 7 is never paid and cancels itself: no packs, no receipt.
        paid = [n for n in range(1, 13) if n != 7]
        assert counts(dsn, demo_schema) == {
            ("demo.Order", "done"): 12,
            ("demo.Pack", "done"): sum(1 + n % 3 for n in paid),
            ("demo.Pack", "failed"): 2,
            ("demo.SendReceipt", "done"): 11,
        }
        total = re.search(r"^total\s+0\s+0\s+0\s+0\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
        assert total is not None, out
        assert [int(g) for g in total.groups()] == [45, 2, 47]


def test_demo_refuses_the_public_schema(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dsn", dsn, "--schema", "public"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "gen-durable demo: error: the demo drops and recreates its tables: give it its own "
        "--schema (see gen-durable demo --help)"
    ]


def test_demo_help_states_the_schema_it_really_uses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert "--schema SCHEMA schema holding the tables (default gen_durable_demo)" in text
    assert "default public" not in text


def test_demo_exits_1_when_the_end_state_is_wrong(
    dsn: str, demo_schema: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A payment gateway that never answers: handle() gives up after 5 retries and the
    # orders fail, which the demo's checks must catch.
    monkeypatch.setattr(demo_module.Plan, "flaky", lambda self, n: 9 if n == 2 else 0)
    assert main(["demo", "--dsn", dsn, "--schema", demo_schema, "--size", "3"]) == 1
    captured = capsys.readouterr()
    assert "[FAILED] 2/3 orders done, no instance left unfinished" in captured.out
    assert "did not reach its expected end state" in captured.err
    assert counts(dsn, demo_schema)[("demo.Order", "failed")] == 1
