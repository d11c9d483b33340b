"""The benchmark script still runs end to end (it is not part of the package, so
nothing else would notice it rotting): tiny workloads on the test server, no peers (a
peer's library lives in its own virtualenv; its scripts' settings are checked here
without it)."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import matrix  # noqa: E402
import run as bench_run  # noqa: E402


def run_bench(
    dsn: str,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    scenarios: str = "chain",
    settings: str = "best",
) -> tuple[dict[str, Any], str]:
    """``bench/run.py`` on tiny ``scenarios`` at ``settings``, no peers: the JSON report
    and the markdown."""
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
            scenarios,
            "--settings",
            settings,
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
        timeout=180,
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
    report, text = run_bench(
        dsn, tmp_path, "--baseline", "HEAD", "--runs", "1", env=env, settings="c10,best"
    )

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
    # The other setting ran for both and is compared too.
    [at_c10] = report["matrix"]["c10"][system]["chain"]
    assert at_c10["steps"] == 200
    assert base["skipped"] == []
    assert base["comparison_at"]["c10"]["chain"][0]["figure"] == "steps_per_s"
    assert "| chain at c10 | steps/s (higher is better) |" in text

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
    """Each scenario ``run.py`` offers is a command its worker accepts and runs (a
    scenario added to one list and not the other fails every run of it)."""
    import gd_worker

    for scenario in bench_run.SCENARIOS:
        assert gd_worker.parse([scenario, "--dsn", "D"]).scenario == scenario
        assert callable(getattr(gd_worker, f"scenario_{scenario}"))


def test_bench_settings_matrix_costs_and_enqueue(dsn: str, tmp_path: Path) -> None:
    """The settings matrix, the cost table and the enqueue scenario, end to end: each
    setting ran with the engine options it names, and each report section shows it."""
    report, text = run_bench(
        dsn, tmp_path, "--runs", "1", scenarios="chain,jobs,enqueue", settings="defaults,c32,best"
    )
    assert report["failures"] == []
    assert report["settings_run"] == ["defaults", "c32", "best"]
    used = report["matrix_settings"]
    strip = {"loop", "package"}
    # Equal settings: gen_durable's defaults with only the concurrency changed.
    assert {k: v for k, v in used["c32"]["gen_durable"].items() if k not in strip} == {
        "queues": {"default": 32}
    }
    assert {k: v for k, v in used["defaults"]["gen_durable"].items() if k not in strip} == {}
    assert used["best"]["gen_durable"]["prefetch"] == 500
    for setting in ("defaults", "c32"):
        [chain] = report["matrix"][setting]["gen_durable"]["chain"]
        [jobs] = report["matrix"][setting]["gen_durable"]["jobs"]
        assert (chain["steps"], jobs["jobs"]) == (200, 200)  # checked done in SQL
        assert chain["worker_cpu_ms_per_step"] > 0 and jobs["pg_cpu_ms_per_job"] > 0
    # The matrix and the cost tables are not duplicated into the best-settings results.
    assert list(report["results"]["gen_durable"]) == ["chain", "jobs", "enqueue"]
    [enqueue] = report["results"]["gen_durable"]["enqueue"]
    assert enqueue["rows"] == 1000 and enqueue["rows_per_s"] > 0
    assert enqueue["api"] == "Engine.insert_all"

    c32 = report["matrix"]["c32"]["gen_durable"]
    assert "## At equal settings, at defaults, at best" in text
    assert "### chain: steps/s (higher is better)" in text
    assert f"| c32 | {bench_run.fmt(c32['chain'][0]['steps_per_s'])} |" in text
    assert "| c32 | `queues={'default': 32}` |" in text
    assert "| defaults | `library defaults` |" in text
    assert "## What a step or a job costs, at equal concurrency" in text
    job = c32["jobs"][0]
    cost = (
        f"{bench_run.fmt(job['worker_cpu_ms_per_job'])} / {bench_run.fmt(job['pg_cpu_ms_per_job'])}"
    )
    assert f"| c32 | {cost} |" in text
    assert "| defaults | " not in text.split("## What a step or a job costs")[1].split("## Enq")[0]
    assert "## Enqueue: one batch call of 1,000 rows" in text
    assert f"| gen_durable | {bench_run.fmt(enqueue['rows_per_s'])} |" in text
    assert "## Running it" in text
    assert matrix.EQUAL == ("c10", "c32", "c500")


def test_bench_refuses_an_unknown_setting(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"unknown setting: c7 \(choose from defaults, c10"):
        bench_run.main(["--settings", "c7,best", "--output", str(tmp_path / "x.md")])


def test_bench_plan_sizes_and_options_per_setting() -> None:
    """What each run of the matrix is given: gen_durable ``--defaults --concurrency N``
    at equal settings, a peer ``--concurrency N``; the slow peers a smaller workload."""
    plan = bench_run.Plan(
        "full",
        ["chain", "latency"],
        ["defaults", "c10", "best"],
        ["pgqueuer", "dbos"],
        None,
        "uvloop",
    )
    runs = list(plan.runs())
    assert [(sc, st, sy) for sc, st, sy, _ in runs][:3] == [
        ("chain", "defaults", "gen_durable"),
        ("chain", "defaults", "pgqueuer"),
        ("chain", "defaults", "dbos"),
    ]
    # latency runs at best only, and no peer runs it.
    assert [(st, sy) for sc, st, sy, _ in runs if sc == "latency"] == [("best", "gen_durable")]
    sizes = {(st, sy): size["n"] for sc, st, sy, size in runs if sc == "chain"}
    assert sizes[("c10", "dbos")] == matrix.SLOW_SIZES["full"]["chain"]
    assert sizes[("best", "dbos")] == sizes[("c10", "pgqueuer")] == 2000
    gd = bench_run.command_for(
        "gen_durable", "chain", "DSN", {"n": 5}, "py", "uvloop", setting="c10"
    )
    assert gd[2:] == [
        "chain",
        "--dsn",
        "DSN",
        "--loop",
        "uvloop",
        "--defaults",
        "--concurrency",
        "10",
        "--n",
        "5",
    ]
    peer = bench_run.command_for(
        "pgqueuer", "jobs", "DSN", {"n": 5, "single": 2}, "py", "uvloop", setting="c32"
    )
    assert peer[2:] == ["jobs", "--dsn", "DSN", "--concurrency", "32", "--n", "5"]
    defaults = bench_run.command_for(
        "dbos", "jobs", "DSN", {"n": 5}, "py", "uvloop", setting="defaults"
    )
    assert defaults[2:] == ["jobs", "--dsn", "DSN", "--defaults", "--n", "5"]


def _configure(peer: str) -> Any:
    """A peer script's ``configure`` without its library: the function and the
    module's constants, read from the script's source."""
    tree = ast.parse((ROOT / "bench" / "peers" / f"{peer}_bench.py").read_text())
    keep = [
        node
        for node in tree.body
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant | ast.Dict))
        or (isinstance(node, ast.FunctionDef) and node.name == "configure")
    ]
    scope: dict[str, Any] = {"Any": Any}
    exec(compile(ast.Module(body=keep, type_ignores=[]), peer, "exec"), scope)
    return scope["configure"]


def test_peer_scripts_size_their_settings_from_the_options() -> None:
    pgq, proc, dbos = (_configure(p) for p in ("pgqueuer", "procrastinate", "dbos"))
    # Equal concurrency: one worker process with N in flight, and what N needs.
    assert pgq(False, 32)["max_concurrent_tasks"] == 32
    assert pgq(False, 32)["batch_size"] == 16  # PgQueuer refuses a cap below 2 batches
    assert pgq(False, 500)["consumers"] == 1
    assert proc(False, 500) == {**proc(False, 500), "concurrency": 500, "pool_size": 32}
    assert proc(True, 10)["concurrency"] == 10  # --concurrency wins over --defaults
    assert dbos(False, 10)["worker_concurrency"] == 10
    # Defaults: the libraries' own.
    assert pgq(True, None)["consumers"] == 1 and pgq(True, None)["batch_size"] == 10
    assert proc(True, None)["concurrency"] == 1 and proc(True, None)["pool_size"] is None
    assert dbos(True, None)["queue_polling_interval_sec"] == 1.0
    # Best: the tuned settings the side-by-side table has always used.
    assert pgq(False, None)["consumers"] == 5 and pgq(False, None)["max_concurrent_tasks"] is None
    assert proc(False, None)["concurrency"] == 10
    assert dbos(False, None)["worker_concurrency"] is None
    with pytest.raises(SystemExit, match="at least 2"):
        pgq(False, 1)


def test_peer_command_line_passes_the_options_to_configure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The argument parser every peer script runs (``common.peer_main``)."""
    import common

    seen: list[Any] = []

    def configure(defaults: bool, concurrency: int | None) -> dict[str, Any]:
        seen.append((defaults, concurrency))
        return {"c": concurrency}

    def run(scenario: str, dsn: str, n: int, settings: dict[str, Any]) -> dict[str, Any]:
        seen.append((scenario, dsn, n, settings))
        return {"ok": True}

    argv = ["x", "enqueue", "--dsn", "D", "--n", "3", "--defaults", "--concurrency", "32"]
    monkeypatch.setattr(sys, "argv", argv)
    common.peer_main(run, configure)
    assert seen == [(True, 32), ("enqueue", "D", 3, {"c": 32})]
    assert common.parse_result(capsys.readouterr().out) == {"ok": True, "settings": {"c": 32}}
    monkeypatch.setattr(sys, "argv", ["x", "enqueue", "--dsn", "D", "--n", "3"])
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with pytest.raises(SystemExit):
        common.peer_main(run, configure, scenarios=("jobs", "chain"))  # DBOS: no enqueue
    monkeypatch.setattr(sys, "argv", ["x", "jobs", "--dsn", "D", "--n", "3", "--concurrency", "0"])
    with pytest.raises(SystemExit):
        common.peer_main(run, configure)


NO_CONCURRENCY_WORKER = """
import argparse
import gen_durable
parser = argparse.ArgumentParser()
parser.add_argument("scenario", choices=["chain"])
parser.add_argument("--dsn", required=True)
parser.add_argument("--n", type=int)
parser.add_argument("--loop")
parser.add_argument("--defaults", action="store_true")
parser.parse_args()
raise SystemExit("the probe must not run the worker")
"""


def test_bench_baseline_without_an_option_skips_those_settings(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path, NO_CONCURRENCY_WORKER)
    base = ["chain", "--dsn", "DSN", "--loop", "uvloop"]
    plan = {
        ("chain", "best"): [base],
        ("chain", "defaults"): [[*base, "--defaults"]],
        ("chain", "c10"): [[*base, "--defaults", "--concurrency", "10"]],
        ("enqueue", "best"): [["enqueue", "--dsn", "DSN"]],
    }
    package, skipped = bench_run.probe_baseline(checkout, plan)
    assert package == "baseline checkout: src/gen_durable/__init__.py"
    assert set(skipped) == {("chain", "c10"), ("enqueue", "best")}
    assert (
        "refuses `chain --dsn DSN --loop uvloop --defaults --concurrency 10`"
        in (skipped[("chain", "c10")])
    )
    assert "unrecognized arguments: --concurrency 10" in skipped[("chain", "c10")]
    assert "invalid choice: 'enqueue'" in skipped[("enqueue", "best")]
    with pytest.raises(SystemExit, match="refuses every run"):
        bench_run.probe_baseline(checkout, {("chain", "c10"): plan[("chain", "c10")]})
