"""``gen-durable demo``: a small shop that uses every primitive, end to end.

The scenario, per order (``demo.Order``, queue ``orders``):

1. ``start`` → ``await_payment``: the order parks until a ``payment`` signal arrives
   (durable await, SPEC §6), addressed by the order's key, not its id (SPEC §20). A
   third of the payments arrive *before* the order ever runs, so those orders never
   park; some payment webhooks are delivered twice with the same ``dedup_key`` and are
   stored once. For one order in ten the webhook arrives before the shop has even
   inserted the order: signal-with-start creates the order with its payment in the
   inbox, and the shop's own insert later finds the key taken. The wait has a deadline
   (``Await(timeout=…)``, SPEC §19): a few orders are never paid, and when the
   deadline wakes them (``ctx.timed_out``) they cancel themselves
   (``cancelled_unpaid``, ending done with a ``cancelled`` result); a payment that
   arrives after that is refused.
2. ``charge``: a flaky payment gateway raises for some orders; ``handle`` answers with
   ``Replay`` and an exponential backoff (SPEC §5) until it goes through.
3. ``pack``: fans out one ``demo.Pack`` job per item (durable children, SPEC §7). Packs
   of one customer share a ``partition_key`` so they never run at the same time
   (SPEC §9). An out-of-stock item fails its pack job (``gd.Cancel``).
4. ``ship``: the parent reads ``ctx.childs`` and decides: ship what was packed and
   backorder the rest; then a one-step ``demo.SendReceipt`` job (a ``gd.Job`` that
   is itself flaky and retried with its ``backoff``) sends the receipt.

Orders are inserted with ``insert_all`` carrying a ``unique_key`` per order number, and
a second insert of order 1 is refused (SPEC §10). The demo drops and recreates its
own schema's tables on every run, shows live progress, checks that every instance
ended as the scenario says it must, and prints a summary and the commands to inspect
what is left. Exit code 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import gen_durable as gd

from .._db import runner
from .._db.statements import admin
from ..engine import Engine
from ..machine import Child
from ..migrate import migrate, migrate_down

# Importing the module registers the demo's machines (demo.Order, demo.Pack,
# demo.SendReceipt) with the process-wide registry the demo's engine resolves from.
from .machines import OUT_OF_STOCK, STATUSES, WATCH, Order
from .plan import Plan

Conn = psycopg.AsyncConnection[Any]
# -- output --------------------------------------------------------------------------


class Progress:
    """Instances by status: redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, out: Any, size: int) -> None:
        self.out = out
        self.size = size
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.last_line = 0.0
        self.printed = ""

    def show(self, counts: dict[str, dict[str, int]], final: bool = False) -> None:
        orders = counts.get("demo.Order", {})
        finished = orders.get("done", 0) + orders.get("failed", 0)
        totals = {s: sum(c.get(s, 0) for c in counts.values()) for s in STATUSES}
        width = 20
        filled = width * finished // max(self.size, 1)
        bar = "#" * filled + "." * (width - filled)
        parts = "  ".join(f"{s} {n}" for s, n in totals.items() if n)
        line = f"orders [{bar}] {finished}/{self.size} | {parts}"
        now = time.monotonic()
        if self.tty:  # a line wider than the terminal would wrap and break the redraw
            line = line[: shutil.get_terminal_size().columns - 1]
            self.out.write("\r\033[K" + line + ("\n" if final else ""))
            self.out.flush()
        elif (final and line != self.printed) or now - self.last_line >= 1.0:
            self.out.write(line + "\n")
            self.out.flush()
            self.last_line, self.printed = now, line


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    from ..cli.common import table

    return table(headers, rows)


# -- the run -------------------------------------------------------------------------


@dataclass
class Outcome:
    checks: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.checks.append((ok, text))

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks)


async def _counts(conn: Conn, schema: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in await runner.fetch(conn, admin.COUNTS_BY_FSM.bind(schema)):
        out.setdefault(row.fsm, {})[row.status] = row.count
    return out


async def _wait(
    conn: Conn,
    schema: str,
    progress: Progress,
    condition: Callable[[dict[str, dict[str, int]]], bool],
    deadline: float,
) -> dict[str, dict[str, int]]:
    while True:
        counts = await _counts(conn, schema)
        progress.show(counts)
        if condition(counts) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


def _active(counts: dict[str, dict[str, int]]) -> int:
    return sum(n for c in counts.values() for s, n in c.items() if s not in ("done", "failed"))


async def _scenario(dsn: str, schema: str, size: int, out: Any) -> tuple[Outcome, dict[str, Any]]:
    plan = Plan(size)
    WATCH.reset()  # a fresh watch per run (a process may run the demo twice)
    # A fresh start every run: our tables go down and come back up.
    await migrate_down(dsn, schema=schema, version=0)
    await migrate(dsn, schema=schema)

    result = Outcome()
    client = Engine(dsn, queues={}, schema=schema, pool_size=2)
    worker = Engine(
        dsn,
        queues={"orders": 8, "packing": 4, "mail": 2},
        schema=schema,
        poll_interval=0.05,
        max_poll_interval=0.2,
        lease_ttl=30,
        heartbeat_interval=5,
        reap_interval=5,
        drain_timeout=2,
    )
    async with client, await runner.connect(dsn) as conn:

        async def pay(n: int, start: gd.Spec | None = None) -> int:
            """Deliver order n's payment webhook (twice for some) to the order's key,
            starting the order if it does not exist yet; returns the duplicates."""
            copies = 2 if plan.duplicated(n) else 1
            for _ in range(copies):
                payment = {"amount": 10 * n}
                await client.signal(
                    plan.key(n), "payment", payment, dedup_key=f"pay-{n}", start=start
                )
            return copies - 1

        # Some webhooks arrive before the shop has inserted their order at all.
        first = [n for n in plan.numbers if plan.webhook_first(n)]
        duplicates = sum([await pay(n, start=plan.order(n)) for n in first])
        shop = [plan.order(n) for n in plan.numbers]
        inserted = await client.insert_all(shop)  # the started ones are dropped: key taken
        result.check(
            len(inserted) == plan.size - len(first),
            f"{len(first)} webhook(s) arrived before their order: signal-with-start created "
            "the order with its payment, and the shop's later insert found the key taken",
        )
        id_of: dict[int, int] = {}
        for n in plan.numbers:
            inst = await client.get(plan.key(n))
            assert inst is not None
            id_of[n] = inst.id

        try:
            await client.insert(Order, state=plan.order(1).options["state"], unique_key=plan.key(1))
            result.check(False, "a second order 1 was accepted despite its unique_key")
        except gd.Duplicate:
            result.check(True, "a second insert of order 1 was refused by its unique_key")

        # Some payments arrive before their order has even run once.
        duplicates += sum([await pay(n) for n in plan.numbers if plan.early(n)])

        late = [n for n in plan.numbers if not plan.early(n) and not plan.webhook_first(n)]
        progress = Progress(out, size)
        started = time.monotonic()
        deadline = started + 50
        async with worker:
            counts = await _wait(
                conn,
                schema,
                progress,
                lambda c: c.get("demo.Order", {}).get("awaiting_signal", 0) >= len(late),
                deadline,
            )
            random.Random(size).shuffle(late)  # webhooks arrive in any order
            duplicates += sum([await pay(n) for n in late if not plan.unpaid(n)])
            counts = await _wait(conn, schema, progress, lambda c: _active(c) == 0, deadline)
            elapsed = time.monotonic() - started
            progress.show(counts, final=True)
        unpaid = [n for n in plan.numbers if plan.unpaid(n)]
        if unpaid:  # a payment after the order cancelled itself is refused, not an error
            refused = await client.signal(id_of[unpaid[0]], "payment", {}, dedup_key="late")
            result.check(refused is False, "a payment arriving after its order was cancelled "
                         "was refused (signal returned False)")  # fmt: skip
        steps = worker.stats.steps

        orders = {n: await client.get(id_of[n]) for n in plan.numbers}
        kids = {n: await client.children(id_of[n]) for n in plan.numbers}

    _verify(result, plan, orders, kids, counts, duplicates)
    partial = [id_of[n] for n in plan.numbers if OUT_OF_STOCK in plan.items(n)]
    facts = {
        "counts": counts,
        "steps": steps,
        "elapsed": elapsed,
        "example": partial[0] if partial else id_of[1],
    }
    return result, facts


def _verify(
    result: Outcome,
    plan: Plan,
    orders: dict[int, Any],
    kids: dict[int, list[Child]],
    counts: dict[str, dict[str, int]],
    duplicates: int,
) -> None:
    res: dict[int, dict[str, Any]] = {
        n: o.result for n, o in orders.items() if o is not None and o.status == "done"
    }
    result.check(
        len(res) == plan.size and _active(counts) == 0,
        f"{len(res)}/{plan.size} orders done, no instance left unfinished",
    )
    if len(res) != plan.size:
        return
    cancelled = [n for n in sorted(res) if "cancelled" in res[n]]
    result.check(
        cancelled == [n for n in plan.numbers if plan.unpaid(n)],
        f"{len(cancelled)} unpaid order(s) cancelled themselves at their payment deadline"
        " (Await timeout)",
    )
    done = [n for n in sorted(res) if n not in cancelled]
    partial = [n for n in done if OUT_OF_STOCK in plan.items(n)]
    good = all(res[n]["backordered"] == ([OUT_OF_STOCK] if n in partial else []) for n in done)
    failed_packs = counts.get("demo.Pack", {}).get("failed", 0)
    result.check(
        good and failed_packs == len(partial),
        f"{len(partial)} pack job(s) failed (out of stock); each parent shipped the rest "
        "and backordered the item",
    )
    result.check(
        all(res[n]["payments_seen"] == 1 for n in done),
        f"{duplicates} duplicate payment webhook(s) stored once each (dedup_key)",
    )
    early = [n for n in done if plan.early(n) or plan.webhook_first(n)]
    result.check(
        all(res[n]["parked"] == (n not in early) for n in done),
        f"{len(early)} payment(s) arrived before their order parked: those never waited",
    )
    flaky = [n for n in done if plan.flaky(n)]
    result.check(
        all(res[n]["charge_attempts"] == plan.flaky(n) + 1 for n in done),
        f"{len(flaky)} flaky charge(s) retried with backoff (Replay), then went through",
    )
    receipts = [c for rows in kids.values() for c in rows if c.fsm == "demo.SendReceipt"]
    retried = sum(1 for c in receipts if c.result and c.result["attempts"] > 1)
    expected = sum(1 for n in done if n % 4 == 0)
    result.check(
        len(receipts) == len(done)
        and all(c.status == "done" for c in receipts)
        and retried == expected,
        f"{len(receipts)} receipts sent by a one-step gd.Job; {retried} retried after an error",
    )
    result.check(
        WATCH.peak == 1,
        f"{WATCH.packs} packs for {len({plan.customer(n) for n in plan.numbers})} customers: "
        f"never two at once for one customer (partition_key; peak {WATCH.peak})",
    )


def _report(out: Any, result: Outcome, facts: dict[str, Any], wall: float) -> None:
    counts: dict[str, dict[str, int]] = facts["counts"]
    rows = [[fsm, *(c.get(s, 0) for s in STATUSES), sum(c.values())] for fsm, c in counts.items()]
    totals = [sum(c.get(s, 0) for c in counts.values()) for s in STATUSES]
    rows.append(["total", *totals, sum(totals)])
    print("\nInstances by status", file=out)
    print(_table(["machine", *STATUSES, "total"], rows), file=out)
    steps, elapsed = facts["steps"], facts["elapsed"]
    print(
        f"\nsteps run: {steps} in {elapsed:.1f}s ({steps / max(elapsed, 1e-9):.0f} steps/s, "
        f"paced by the scenario's own waits: backoffs, packing); wall time {wall:.1f}s",
        file=out,
    )
    print("\nChecks", file=out)
    for ok, text in result.checks:
        print(f"  [{'ok' if ok else 'FAILED'}] {text}", file=out)


def _inspect_hints(out: Any, target: str, schema: str, dsn: str | None, example: int) -> None:
    print("\nInspect what is left", file=out)
    print(f"  gen-durable status {target} --schema {schema}", file=out)
    print(
        f"  gen-durable show {example} {target} --schema {schema}"
        "    # an order with a backordered item",
        file=out,
    )
    sql = admin.one_line(admin.COUNTS_BY_FSM, schema)
    if dsn is not None:
        print(f"  psql {shlex.quote(dsn)} -c {shlex.quote(sql)}", file=out)
    else:
        print(
            "  (the embedded server stops with the demo; each --embedded command starts it "
            "again. For psql, rerun the demo with --dsn on a server of yours.)",
            file=out,
        )


def run_demo(
    *, dsn: str | None, schema: str, size: int, embedded: bool = False, out: Any = None
) -> int:
    """Run the demo; returns the exit code (0 when the scenario ended as it must)."""
    out = out or sys.stdout
    t0 = time.monotonic()
    if schema == "public":
        from ..cli.common import UsageError

        raise UsageError("the demo drops and recreates its tables: give it its own --schema")
    dsn = dsn or os.environ.get("GEN_DURABLE_DSN") or os.environ.get("DATABASE_URL")
    given = dsn
    if embedded or dsn is None:
        data = Path.cwd() / ".pgdata"
        print(f"Starting the embedded PostgreSQL server in {data} ...", file=out, flush=True)
        from ..cli.common import start_embedded

        dsn = start_embedded(data)
        given = None
    target = "--embedded" if given is None else f"--dsn {shlex.quote(given)}"
    print(f"Running {size} orders in schema {schema!r} ...", file=out, flush=True)
    # The gateway and the mail server fail on purpose and `handle` deals with it: their
    # tracebacks (WARNING on gen_durable.step) would bury the report. `show` has them.
    step_log = logging.getLogger("gen_durable.step")
    level = step_log.level
    step_log.setLevel(logging.ERROR)
    try:
        result, facts = asyncio.run(_scenario(dsn, schema, size, out))
    finally:
        step_log.setLevel(level)
    _report(out, result, facts, time.monotonic() - t0)
    _inspect_hints(out, target, schema, given, facts["example"])
    if not result.ok:
        print("\nThe demo did not reach its expected end state.", file=sys.stderr)
        return 1
    return 0
