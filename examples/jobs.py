"""One-step jobs: retries with backoff, cancellation, uniqueness and per-key order.

    python examples/jobs.py

- ``FetchRates`` fails twice (a flaky upstream) and succeeds on its third attempt,
  waiting ``backoff(attempt)`` between attempts.
- ``Charge`` refuses a zero amount with ``gd.Cancel``: failed at once, no retry.
- ``NightlyReport`` is inserted three times with one ``unique_key``: only one exists.
- ``Ledger`` entries of one account share a ``partition_key``: they never run at the
  same time, so the read-modify-write on the balance never loses an update, while two
  accounts proceed in parallel.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from _support import database, wait_for_status

import gen_durable as gd

UPSTREAM_FAILURES = {"left": 2}
BALANCES: dict[str, int] = {"acct-1": 0, "acct-2": 0}
RUNNING: dict[str, int] = {"acct-1": 0, "acct-2": 0}
PEAK: dict[str, int] = {"acct-1": 0, "acct-2": 0}


class FetchRates(gd.Job, name="examples.jobs.fetch_rates", max_attempts=5):
    def backoff(self, attempt: int) -> float:
        return 0.1 * 2.0**attempt  # 0.1 s, 0.2 s, ... (the default is min(2 ** attempt, 300))

    async def perform(
        self, args: dict[str, str], ctx: gd.Context[dict[str, str]]
    ) -> dict[str, object]:
        if UPSTREAM_FAILURES["left"] > 0:
            UPSTREAM_FAILURES["left"] -= 1
            raise ConnectionError("rates service unavailable")
        return {"currency": args["currency"], "rate": 1.08, "attempt": ctx.attempt}


class Charge(gd.Job, name="examples.jobs.charge"):
    async def perform(self, args: dict[str, int]) -> dict[str, int]:
        if args["cents"] <= 0:
            raise gd.Cancel(f"refusing to charge {args['cents']} cents")
        return {"charged": args["cents"]}


class NightlyReport(gd.Job, name="examples.jobs.nightly_report"):
    def perform(self, args: dict[str, str]) -> str:  # a plain def runs in a thread
        return f"report for {args['day']}"


class Ledger(gd.Job, name="examples.jobs.ledger"):
    async def perform(self, args: dict[str, object]) -> int:
        account = str(args["account"])
        RUNNING[account] += 1
        PEAK[account] = max(PEAK[account], RUNNING[account])
        balance = BALANCES[account]
        await asyncio.sleep(0.005)  # a slow read-modify-write
        BALANCES[account] = balance + int(str(args["cents"]))
        RUNNING[account] -= 1
        return BALANCES[account]


async def main(dsn: str) -> None:
    day = dt.date.today().isoformat()
    async with gd.Engine(
        dsn, queues={"default": 8}, poll_interval=0.05, max_poll_interval=0.2
    ) as engine:
        rates = await engine.insert(FetchRates, args={"currency": "EUR"})
        refused = await engine.insert(Charge, args={"cents": 0})
        charged = await engine.insert(Charge, args={"cents": 250})

        report = await engine.insert(NightlyReport, args={"day": day}, unique_key=f"report:{day}")
        for _ in range(2):
            try:
                await engine.insert(NightlyReport, args={"day": day}, unique_key=f"report:{day}")
            except gd.Duplicate:
                print("nightly report already queued: duplicate refused")

        entries = await engine.insert_all(
            gd.Spec(Ledger, args={"account": acct, "cents": 10}, partition_key=acct)
            for _ in range(15)
            for acct in ("acct-1", "acct-2")
        )

        fetched = await wait_for_status(engine, rates, "done", "failed")
        print(f"rates: {fetched.status} {fetched.result}")
        cancelled = await wait_for_status(engine, refused, "done", "failed")
        print(f"charge 0: {cancelled.status} ({cancelled.last_error})")
        ok = await wait_for_status(engine, charged, "done", "failed")
        print(f"charge 250: {ok.status} {ok.result}")
        nightly = await wait_for_status(engine, report, "done", "failed")
        print(f"report: {nightly.result}")
        for entry in entries:
            await wait_for_status(engine, entry, "done")
        print(f"ledger balances {BALANCES}, most entries at once per account {PEAK}")

    assert fetched.result == {"currency": "EUR", "rate": 1.08, "attempt": 2}
    assert cancelled.status == "failed" and cancelled.attempt == 0
    assert ok.result == {"charged": 250}
    assert BALANCES == {"acct-1": 150, "acct-2": 150} and PEAK == {"acct-1": 1, "acct-2": 1}
    print("jobs: ok")


if __name__ == "__main__":
    asyncio.run(main(database()))
