"""The pytest plugin (``pytest -p gen_durable.testing``) in a real pytest run: the
testing guide's own blocks, as one test module, pass under it, and every test's schema
is migrated, its own, and gone afterwards (SPEC §24)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from .test_docs import ROOT, fresh_database, python_blocks  # noqa: F401 - fixture

ISOLATION = """
import psycopg

SEEN = []


def test_first(gd_schema):
    with psycopg.connect(gd_schema.dsn) as conn:
        conn.execute(f'INSERT INTO "{gd_schema.schema}".gen_durable (fsm, step, queue) '
                     "VALUES ('x', 'start', 'default')")
    SEEN.append(gd_schema.schema)


def test_second(gd_schema, gd_dsn):
    assert gd_schema.schema not in SEEN and gd_schema.dsn == gd_dsn
    with psycopg.connect(gd_schema.dsn) as conn:
        n = conn.execute(f'SELECT count(*) FROM "{gd_schema.schema}".gen_durable').fetchone()
    assert n == (0,)
    SEEN.append(gd_schema.schema)


def test_zz_write_names():
    with open(__import__("os").environ["SCHEMAS_FILE"], "w") as f:
        f.write("\\n".join(SEEN))
"""


def test_the_guide_runs_as_a_pytest_module_on_the_plugin(
    tmp_path: Path,
    dsn: str,
    fresh_database: str,  # noqa: F811
) -> None:
    guide = python_blocks(ROOT / "docs" / "testing.md", "python")
    (tmp_path / "test_guide.py").write_text("\n\n".join(b.code for b in guide))
    (tmp_path / "test_isolation.py").write_text(ISOLATION)
    names = tmp_path / "schemas.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        GEN_DURABLE_DSN=fresh_database,  # the guide's module-level examples
        GEN_DURABLE_TEST_DSN=dsn,  # the plugin's fixture
        SCHEMAS_FILE=str(names),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "gen_durable.testing",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "--rootdir",
            str(tmp_path),
            ".",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b4 passed\b", proc.stdout), proc.stdout
    schemas = names.read_text().split()
    assert len(schemas) == 2 and len(set(schemas)) == 2
    with psycopg.connect(dsn) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)
        ).fetchall()
    assert left == [], "the plugin drops each test's schema"
