"""The sample user project ``examples/shop`` passes its own pytest suite, which uses
only the gen_durable pytest plugin (``gd_schema``) and ``drain`` (SPEC §24)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "shop"


def _run_project(**env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    for name in ("GEN_DURABLE_TEST_DSN", "GEN_DURABLE_DSN", "DATABASE_URL"):
        env.pop(name, None)
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_sample_project_suite_passes_on_the_plugin_fixture(dsn: str) -> None:
    proc = _run_project(GEN_DURABLE_TEST_DSN=dsn)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b3 passed\b", proc.stdout), proc.stdout


def test_without_a_dsn_the_plugin_starts_an_embedded_server() -> None:
    # No database configured at all: the plugin's session fixture starts one private
    # server for the whole session and every test still gets a schema of its own.
    proc = _run_project()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b3 passed\b", proc.stdout), proc.stdout


def test_the_sample_project_uses_only_the_plugin_and_drain() -> None:
    tests = "\n".join(p.read_text() for p in (PROJECT / "tests").glob("*.py"))
    assert "gd_schema" in tests and "drain(" in tests
    # No harness of its own: no conftest, no engine with workers, no polling.
    assert not list(PROJECT.rglob("conftest.py"))
    for forbidden in ("queues={", "sleep(", "wait(", "wait_for"):
        assert forbidden not in tests, forbidden
