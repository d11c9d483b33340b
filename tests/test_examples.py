"""Every script in ``examples/`` runs, as a user would run it, and ends as it says.

Each runs as its own process (``python examples/<name>.py``) against a brand-new
database named by ``GEN_DURABLE_DSN``; the script migrates it, does its work, checks
its own results (non-zero exit on any mismatch) and prints ``<name>: ok``. Afterwards
the database is inspected too: nothing may be left executing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from .test_docs import fresh_database  # noqa: F401 - the per-test database fixture

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))

# What each script leaves in its database besides finished instances.
LEFT_WAITING = {"checkout": 1}  # the order that is never paid stays parked


def test_there_are_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"checkout", "fanout", "jobs", "django_enqueue"}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, fresh_database: str) -> None:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["GEN_DURABLE_DSN"] = fresh_database
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith(f"{script.stem}: ok"), proc.stdout

    with psycopg.connect(fresh_database) as conn:
        counts = dict(
            conn.execute("SELECT status::text, count(*) FROM gen_durable GROUP BY 1").fetchall()
        )
    assert counts.get("done", 0) > 0, counts
    assert "executing" not in counts and "runnable" not in counts, counts
    assert counts.get("awaiting_signal", 0) == LEFT_WAITING.get(script.stem, 0), counts
