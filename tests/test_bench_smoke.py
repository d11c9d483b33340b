"""The benchmark script still runs end to end (it is not part of the package, so
nothing else would notice it rotting): a tiny chain on the test server, no peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_tiny_chain_produces_numbers_and_a_profile(dsn: str, tmp_path: Path) -> None:
    out_md = tmp_path / "performance.md"
    out_json = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--peers",
            "none",
            "--scenarios",
            "chain",
            "--size",
            "tiny",
            "--profile",
            "--dsn",
            dsn,
            "--output",
            str(out_md),
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads(out_json.read_text())
    assert report["failures"] == []
    assert report["settings"]["gen_durable"]["loop"] == "uvloop"  # the default, as stated
    [run] = report["results"]["gen_durable"]["chain"]
    # 50 instances x (3 Next + Done): the worker checked all of them are done in SQL.
    assert run["instances"] == 50
    assert run["steps"] == 200
    assert run["steps_per_s"] > 0
    assert run["elapsed_s"] > 0
    assert run["worker_cpu_s"] > 0
    assert run["pg_commits"] > 0
    assert run["statements_per_step"] > 0
    assert report["machine"]["postgres_settings"]["synchronous_commit"] in {"on", "off", "local"}
    # The profile of the chain's engine names the engine's own functions.
    assert any(r["function"].startswith("gen_durable/") for r in report["profile"])

    text = out_md.read_text()
    assert "# Performance" in text
    assert "| chain | steps/s |" in text
    assert "## Where gen_durable's time goes" in text
    assert report["command"] in text
