"""The benchmark script still runs end to end (it is not part of the package, so
nothing else would notice it rotting): a tiny chain on the test server, no peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402


def run_bench(
    dsn: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """``bench/run.py`` on a tiny chain, no peers: the JSON report and the markdown."""
    out_md = tmp_path / "performance.md"
    out_json = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            *args,
            "--peers",
            "none",
            "--scenarios",
            "chain",
            "--size",
            "tiny",
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
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out_json.read_text()), out_md.read_text()


def test_bench_quick_tiny_chain_produces_numbers_and_a_profile(dsn: str, tmp_path: Path) -> None:
    report, text = run_bench(dsn, tmp_path, "--quick", "--profile")
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

    assert "# Performance" in text
    assert "| chain | steps/s |" in text
    assert "## Where gen_durable's time goes" in text
    assert report["command"] in text


def _git(*args: str) -> str:
    # The project is always tested from a git checkout (CI clones it); baseline mode
    # needs one, so a missing repository is a failure here, not a reason to skip.
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)} failed: {done.stderr.strip()}"
    return done.stdout.strip()


def test_bench_baseline_runs_the_revisions_own_package(dsn: str, tmp_path: Path) -> None:
    head, short = _git("rev-parse", "HEAD"), _git("rev-parse", "--short", "HEAD")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}  # where the checkout goes: seen removed
    report, text = run_bench(dsn, tmp_path, "--baseline", "HEAD", "--runs", "1", env=env)

    system = f"gen_durable@{short}"
    assert report["failures"] == []
    base = report["baseline"]
    assert (base["rev"], base["commit"], base["system"]) == ("HEAD", head, system)
    # The probe and every run of the baseline imported the checkout's package; this
    # tree's runs did not (they import whatever the interpreter has installed).
    assert base["package"] == "baseline checkout: src/gen_durable/__init__.py"
    assert report["settings"][system]["package"] == base["package"]
    assert not report["settings"]["gen_durable"]["package"].startswith("baseline checkout")
    [ours] = report["results"]["gen_durable"]["chain"]
    [theirs] = report["results"][system]["chain"]
    assert ours["steps"] == theirs["steps"] == 200
    first = base["comparison"]["chain"][0]
    assert first["figure"] == "steps_per_s"
    assert first["ratio"] == pytest.approx(ours["steps_per_s"] / theirs["steps_per_s"], rel=1e-3)
    assert first["verdict"] in {"within noise", "faster", "slower"}
    assert not base["settings_differ"]
    assert list(scratch.iterdir()) == []

    assert f"## This tree vs {system}" in text
    steps = bench_run.fmt(ours["steps_per_s"])
    assert f"| chain | steps/s (higher is better) | {steps} |" in text
    assert f"{system} (steps/s, {first['ratio']:.2f}×)." in text  # the verdict line


def _fake_checkout(root: Path, worker: str) -> Path:
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "gd_worker.py").write_text(worker)
    (root / "src" / "gen_durable").mkdir(parents=True)
    (root / "src" / "gen_durable" / "__init__.py").write_text("")
    return root


OLD_WORKER = """
import argparse
import gen_durable
parser = argparse.ArgumentParser()
parser.add_argument("scenario", choices=["chain"])
parser.add_argument("--dsn", required=True)
parser.add_argument("--n", type=int)
parser.parse_args()
raise SystemExit("the probe must not run the worker")
"""


def test_bench_baseline_with_other_arguments_fails_clearly(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path, OLD_WORKER)
    line = ["chain", "--dsn", "DSN", "--n", "5"]
    assert bench_run.check_baseline(checkout, [line]) == (
        "baseline checkout: src/gen_durable/__init__.py"
    )
    newer = ["chain", "--dsn", "DSN", "--loop", "uvloop"]
    with pytest.raises(SystemExit, match=r"refuses `chain --dsn DSN --loop uvloop`: unrecog"):
        bench_run.check_baseline(checkout, [line, newer])


def test_bench_baseline_that_imports_this_tree_fails(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path, OLD_WORKER)
    (checkout / "src" / "gen_durable" / "__init__.py").unlink()
    (checkout / "src" / "gen_durable").rmdir()
    with pytest.raises(SystemExit, match="imports gen_durable from this tree"):
        bench_run.check_baseline(checkout, [["chain", "--dsn", "DSN"]])


@pytest.mark.parametrize(
    ("ours", "theirs", "better", "expected"),
    [
        ((100, 90, 110), (95, 80, 100), "higher", "within noise"),  # spreads overlap
        ((104, 104, 104), (100, 100, 100), "higher", "within noise"),  # within 5 %
        ((120, 115, 125), (100, 95, 105), "higher", "faster"),
        ((120, 115, 125), (100, 95, 105), "lower", "slower"),
        ((0.8, 0.8, 0.8), (1.0, 1.0, 1.0), "lower", "faster"),
    ],
)
def test_bench_baseline_verdict(
    ours: tuple[float, float, float],
    theirs: tuple[float, float, float],
    better: str,
    expected: str,
) -> None:
    ratio, said = bench_run.verdict(ours, theirs, better, ("faster", "slower"))
    assert said == expected
    assert ratio == pytest.approx(ours[0] / theirs[0])


def test_every_scenario_has_a_worker() -> None:
    """Each scenario ``run.py`` offers is a command its worker accepts (a scenario added
    to one list and not the other fails every run of it)."""
    import gd_worker

    assert set(bench_run.SCENARIOS) <= set(gd_worker.RUNNERS)
