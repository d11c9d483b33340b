"""The invariant checker: reads the database and the effect log, reports violations.

:func:`check` never raises on a broken invariant: it returns a :class:`Report` with
counts and a list of violations, so a soak run can print everything it found and a
test can ``assert report.ok, report``. The invariants (issue 6, SPEC §0, §4–§9):

1. Nothing lost: every expected instance exists and is terminal, with the status and
   result its machine must reach; no row is left ``executing``.
2. Each committed transition happened once: the ``path`` in state/result equals the
   expected path exactly (a stale outcome that overwrote, or a transition committed
   twice, changes it — SPEC §18.2).
3. Re-executions are counted and must be explained by faults: executions minus
   committed transitions, per instance. Every committed transition has at least one
   execution; two executions of the same transition never ran under the same attempt
   (a crash re-run is counted by the reaper, SPEC §5.3 — the same claim running twice
   would be a double pick). The caller passes the bound its faults allow (0 without).
4. Signals: each waiter consumed exactly one ``go`` (duplicates were deduplicated) and
   got the payload sent to it; the inbox holds no ``go`` after a step that awaited and
   consumed it, exactly one when the signal arrived before the park (nothing to
   consume, SPEC §6), and the never-awaited ``noise`` signal survives.
5. Per-key serialization: no two executions under one ``partition_key`` overlap in
   time — unless one of them is a superseded execution (a frozen or killed worker
   whose lease expired), which is the lease model's documented limit (SPEC §9).
6. Children: every parent has exactly its scheduled children, all terminal,
   ``children_pending = 0``, and what it saw at the join matches the rows.
7. Control (SPEC §21, when the run cancelled and retried instances): every row's
   barrier count is 0 at the end (each child counted exactly once, retried ones
   included); only the instances cancelled and their descendants are ``cancelled``;
   no child of a cancelled parent changed after the cancel committed (none escaped
   it); a retried parent ran its join once and ended ``done``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .workload import payload_for

TERMINAL = ("done", "failed", "cancelled")


@dataclass
class Report:
    instances: int = 0
    terminal: int = 0
    by_machine: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    committed: int = 0
    reexecutions: int = 0
    reexecuted: list[tuple[int, int]] = field(default_factory=list)
    signals_left: int = 0
    awaited: int = 0
    early: int = 0
    overlaps_explained: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        head = (
            f"instances={self.instances} terminal={self.terminal} "
            f"executions={self.executions} committed={self.committed} "
            f"reexecutions={self.reexecutions} waiters(awaited={self.awaited}, "
            f"early={self.early}) overlaps_explained={self.overlaps_explained} "
            f"violations={len(self.violations)}"
        )
        return "\n  ".join([head, *self.violations[:40]])

    def __str__(self) -> str:
        return self.summary()


@dataclass
class Row:
    id: int
    fsm: str
    step: str
    status: str
    state: Any
    result: Any
    last_error: str | None
    parent_id: int | None
    children_pending: int
    partition_key: str | None
    updated_at: Any = None
    detached: bool = False


@dataclass
class Control:
    """What the run's operator did (SPEC §21): the instances it cancelled and left so,
    the cancelled ones it then retried, and the failed children it retried."""

    cancelled: set[int] = field(default_factory=set)
    retried: set[int] = field(default_factory=set)
    retried_kids: set[int] = field(default_factory=set)


@dataclass
class Effect:
    instance: int
    seq: int
    attempt: int
    node: str
    pkey: str | None
    started: float
    finished: float | None  # None: interrupted (the node died or was stopped mid-step)


def _load(dsn: str, schema: str) -> tuple[list[Row], list[tuple[int, str, str]], list[Effect]]:
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = [
            Row(*r)
            for r in conn.execute(
                sql.SQL(
                    "SELECT id, fsm, step, status::text, state, result, last_error, parent_id,"
                    " children_pending, partition_key, updated_at, detached FROM {}.gen_durable"
                    " ORDER BY id"
                ).format(s)
            )
        ]
        signals = [
            (t, n, d or "")
            for t, n, d in conn.execute(
                sql.SQL("SELECT target_id, name, dedup_key FROM {}.signals ORDER BY id").format(s)
            )
        ]
        effects = [
            Effect(i, q, a, n, k, st.timestamp(), fi.timestamp() if fi else None)
            for i, q, a, n, k, st, fi in conn.execute(
                sql.SQL(
                    "SELECT instance, seq, attempt, node, pkey, started_at, finished_at"
                    " FROM {}.effects"
                ).format(s)
            )
        ]
    return rows, signals, effects


def _short(fsm: str) -> str:
    return fsm.rsplit(".", 1)[-1]


def check(
    dsn: str,
    schema: str,
    expected_ids: list[int] | None = None,
    *,
    max_reexecutions: int = 0,
    control: Control | None = None,
) -> Report:
    """Check every invariant; ``expected_ids`` are the ids the test inserted."""
    rows, signals, effects = _load(dsn, schema)
    rep = Report(instances=len(rows))
    bad = rep.violations.append
    by_id = {r.id: r for r in rows}
    kids_of: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        if r.parent_id is not None:
            kids_of[r.parent_id].append(r)
    inbox: dict[int, Counter[str]] = defaultdict(Counter)
    for target, name, _ in signals:
        inbox[target][name] += 1
    rep.signals_left = len(signals)

    for i in expected_ids or ():
        if i not in by_id:
            bad(f"instance {i}: lost (no row)")

    ops = control or Control()
    touched = _descendants(ops.cancelled | ops.retried, kids_of)
    committed: dict[int, int] = {}
    for r in rows:
        kind = _short(r.fsm)
        rep.by_machine[kind] = rep.by_machine.get(kind, 0) + 1
        if r.status in TERMINAL:
            rep.terminal += 1
        else:
            bad(f"instance {r.id} ({kind}): not terminal, {r.status} at {r.step}")
            continue
        if r.children_pending != 0:
            bad(f"instance {r.id} ({kind}): children_pending {r.children_pending} at the end")
        if r.id in touched or r.id in ops.retried_kids or r.status == "cancelled":
            _check_controlled(r, kind, kids_of.get(r.id, []), ops, touched, rep)
            continue  # its path and executions were cut short on purpose
        n = _check_row(r, kind, kids_of.get(r.id, []), inbox.get(r.id, Counter()), rep)
        if n is not None:
            committed[r.id] = n

    _check_effects(effects, committed, rep, max_reexecutions)
    return rep


def _descendants(roots: set[int], kids_of: dict[int, list[Row]]) -> set[int]:
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(k.id for k in kids_of.get(i, []))
    return seen


def _check_controlled(
    r: Row, kind: str, kids: list[Row], ops: Control, touched: set[int], rep: Report
) -> None:
    """A row the operator cancelled or retried, or one inside such a tree."""
    bad = rep.violations.append
    if r.status == "cancelled" and r.id not in touched:
        bad(f"instance {r.id} ({kind}): cancelled, but nobody cancelled it or an ancestor")
    if r.id in ops.cancelled:
        if r.status != "cancelled":
            bad(f"instance {r.id} ({kind}): {r.status} after its cancel, expected cancelled")
        for k in kids:  # §27.2: nothing under it moved after the cancel committed
            if k.status not in TERMINAL or (k.updated_at and k.updated_at > r.updated_at):
                bad(f"instance {k.id}: child of cancelled {r.id} changed after the cancel")
    if r.id in ops.retried and kind == "Parent":
        path = (r.result or {}).get("path") if isinstance(r.result, dict) else None
        if r.status != "done" or path != ["start:schedule", "joined:done"]:
            bad(f"instance {r.id} (Parent): retried, ended {r.status} with path {path}")
        elif r.result.get("kids") != len(kids):
            bad(f"instance {r.id} (Parent): retried, saw {r.result.get('kids')} of {len(kids)}")
    if r.id in ops.retried_kids and r.status not in ("failed", "cancelled"):
        bad(f"instance {r.id} ({kind}): retried bad kid ended {r.status}")


def _check_row(r: Row, kind: str, kids: list[Row], inbox: Counter[str], rep: Report) -> int | None:
    """Per-machine terminal state; returns the number of committed transitions."""
    bad = rep.violations.append
    path = (r.result or {}).get("path") if isinstance(r.result, dict) else None
    state_path = r.state.get("path", []) if isinstance(r.state, dict) else []

    def expect_path(want: list[str]) -> None:
        if path != want:
            bad(f"instance {r.id} ({kind}): path {path} != expected {want}")
        if state_path != want[:-1]:
            bad(f"instance {r.id} ({kind}): state path {state_path} != expected {want[:-1]}")

    if kind != "Waiter" and inbox:
        bad(f"instance {r.id} ({kind}): unexpected signals left {dict(inbox)}")
    if kind == "BadKid":
        if r.status != "failed" or r.last_error != "bad kid":
            bad(f"instance {r.id} (BadKid): {r.status} / {r.last_error!r}, expected failed")
        return 1
    if r.status != "done":
        bad(f"instance {r.id} ({kind}): {r.status} ({r.last_error!r}), expected done")
        return None
    if kind == "Chain":
        length = r.state["length"]
        expect_path([f"s{i}:next" for i in range(length - 1)] + [f"s{length - 1}:done"])
    elif kind == "Flaky":
        expect_path(["start:replay"] * r.state["fails"] + ["start:done"])
    elif kind == "Kid":
        expect_path(["start:done"])
        if r.parent_id is None or r.result.get("i") != r.state["i"]:
            bad(f"instance {r.id} (Kid): result {r.result} parent {r.parent_id}")
    elif kind == "Double":
        if r.result != {"y": 2 * r.state["x"]}:
            bad(f"instance {r.id} (Double): result {r.result}, expected y = {2 * r.state['x']}")
        return 1
    elif kind == "Waiter":
        _check_waiter(r, path, inbox, rep)
        return len(path or ())
    elif kind == "Parent":
        expect_path(["start:schedule", "joined:done"])
        _check_parent(r, kids, rep)
    else:
        bad(f"instance {r.id}: unknown machine {r.fsm}")
        return None
    return len(path or ())


def _check_waiter(r: Row, path: list[str] | None, inbox: Counter[str], rep: Report) -> None:
    bad = rep.violations.append
    awaited = ["start:next", "wait:await", "wait:next", "after:done"]
    early = ["start:next", "wait:next", "after:done"]
    if path == awaited:
        rep.awaited += 1
        want_go = 0  # consumed by the step that awaited it
    elif path == early:
        rep.early += 1
        want_go = 1  # arrived before any park: nothing awaited, nothing consumed
    else:
        bad(f"instance {r.id} (Waiter): path {path} is neither {awaited} nor {early}")
        return
    if r.state.get("path") != path[:-1]:
        bad(f"instance {r.id} (Waiter): state path {r.state.get('path')} != {path[:-1]}")
    if r.result.get("got") != payload_for(r.id) or r.result.get("go_count") != 1:
        bad(
            f"instance {r.id} (Waiter): consumed {r.result.get('go_count')} go signal(s) "
            f"with {r.result.get('got')}, expected one with {payload_for(r.id)}"
        )
    if inbox.get("go", 0) != want_go:
        bad(f"instance {r.id} (Waiter): {inbox.get('go', 0)} go left in inbox, want {want_go}")
    if inbox.get("noise", 0) != 1:
        bad(f"instance {r.id} (Waiter): noise signal count {inbox.get('noise', 0)} != 1")
    extra = set(inbox) - {"go", "noise"}
    if extra:
        bad(f"instance {r.id} (Waiter): unexpected signals {sorted(extra)}")


def _check_parent(r: Row, kids: list[Row], rep: Report) -> None:
    bad = rep.violations.append
    n = r.state["n"]
    ok_kids = [k for k in kids if _short(k.fsm) == "Kid"]
    bad_kids = [k for k in kids if _short(k.fsm) == "BadKid"]
    if len(ok_kids) != n or len(bad_kids) != 1 or len(kids) != n + 1:
        bad(f"instance {r.id} (Parent): children {[_short(k.fsm) for k in kids]}, want {n}+1")
    if r.children_pending != 0:
        bad(f"instance {r.id} (Parent): children_pending {r.children_pending} != 0")
    if any(k.status not in TERMINAL for k in kids):
        bad(f"instance {r.id} (Parent): non-terminal children at the end")
    want = {"kids": n + 1, "done": n, "failed": 1, "sum": sum(range(n))}
    seen = {k: r.result.get(k) for k in want}
    # A failed child retried after its parent was woken runs detached (SPEC §21): the
    # parent's join may have seen it live again, so not counted as failed.
    if any(k.detached for k in bad_kids) and seen == {**want, "failed": 0}:
        seen = want
    if seen != want:
        bad(f"instance {r.id} (Parent): saw {seen} at the join, expected {want}")
    if sorted(k.state.get("i", -1) for k in ok_kids) != list(range(n)):
        bad(f"instance {r.id} (Parent): children states {[k.state for k in ok_kids]}")


def _check_effects(
    effects: list[Effect], committed: dict[int, int], rep: Report, max_reexecutions: int
) -> None:
    bad = rep.violations.append
    runs: dict[tuple[int, int], list[Effect]] = defaultdict(list)
    per_instance: Counter[int] = Counter()
    for e in effects:
        runs[(e.instance, e.seq)].append(e)
        per_instance[e.instance] += 1
    rep.executions = len(effects)
    rep.committed = sum(committed.values())
    for inst, n in committed.items():
        for seq in range(n):
            if (inst, seq) not in runs:
                bad(f"instance {inst}: transition {seq} committed but never executed")
        extra = per_instance[inst] - n
        if extra < 0:
            bad(f"instance {inst}: {per_instance[inst]} executions for {n} transitions")
    for key, group in runs.items():
        if key[0] not in committed:
            continue
        attempts = Counter(e.attempt for e in group)
        twice = [a for a, c in attempts.items() if c > 1]
        if twice:
            bad(f"instance {key[0]} transition {key[1]}: attempt(s) {twice} executed twice")
        if len(group) > 1:
            rep.reexecuted.append(key)
        elif group[0].finished is None and key[1] < committed[key[0]]:
            bad(f"instance {key[0]} transition {key[1]}: committed, but its only run never ended")
    rep.reexecutions = sum(max(per_instance[i] - n, 0) for i, n in committed.items())
    if rep.reexecutions > max_reexecutions:
        bad(f"{rep.reexecutions} re-executions, more than the {max_reexecutions} faults explain")
    _check_overlaps(effects, {k for k, g in runs.items() if len(g) > 1}, rep)


def _check_overlaps(effects: list[Effect], superseded: set[tuple[int, int]], rep: Report) -> None:
    by_key: dict[str, list[Effect]] = defaultdict(list)
    for e in effects:
        if e.pkey is not None:
            by_key[e.pkey].append(e)
    for key, group in by_key.items():
        group.sort(key=lambda e: e.started)
        latest: Effect | None = None
        for e in group:
            if e.finished is None:
                continue  # interrupted: superseded by its re-execution
            if latest is not None and latest.finished and e.started < latest.finished:
                if (e.instance, e.seq) in superseded or (latest.instance, latest.seq) in superseded:
                    rep.overlaps_explained += 1
                else:
                    rep.violations.append(
                        f"partition {key!r}: instance {e.instance} step {e.seq} on {e.node} "
                        f"started while instance {latest.instance} step {latest.seq} on "
                        f"{latest.node} was running"
                    )
            if latest is None or latest.finished is None or e.finished > latest.finished:
                latest = e


def dump(report: Report) -> str:
    """The report as JSON (for the soak's output)."""
    data = {k: v for k, v in report.__dict__.items() if k != "reexecuted"}
    return json.dumps(data, indent=2, default=str)
