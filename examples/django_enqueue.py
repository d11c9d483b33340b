"""Transactional enqueue from synchronous web code (a Django/Flask-style sketch).

    python examples/django_enqueue.py

Web views are synchronous and run inside a database transaction. ``gd.SyncClient``
inserts instances and delivers signals *on the view's own connection*, so they commit
or roll back with the view's other writes: no order without its workflow, no workflow
for an order that was rolled back. Plain psycopg stands in for Django here; in Django,
pass ``conn=django.db.connection.connection`` inside ``transaction.atomic()``.

Workers run in their own processes in production; this script runs one briefly at the
end so the sketch is complete.
"""

from __future__ import annotations

import asyncio

import psycopg
from _support import database, wait_for_status

import gen_durable as gd


class Welcome(gd.FSM, name="examples.django.welcome"):
    class State(gd.State):
        user_id: int
        email: str

    def step(self, step: str, ctx: gd.Context[Welcome.State]) -> gd.Outcome:
        # Look before parking: the confirmation may already be in the inbox (here it is,
        # since no worker ran before the click). Awaiting a name whose signal this step
        # has already seen would wait for a *second* one.
        if not any(s.name == "email_confirmed" for s in ctx.signals):
            return gd.Await("email_confirmed", ctx.state)
        return gd.Done({"welcomed": ctx.state.email})


def setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS example_users (id serial PRIMARY KEY, email text)")


def signup_view(dsn: str, client: gd.SyncClient, email: str, *, fail: bool) -> int | None:
    """A view: create the user and start its workflow in one transaction."""
    with psycopg.connect(dsn) as conn:  # a transaction, like Django's ATOMIC_REQUESTS
        try:
            row = conn.execute(
                "INSERT INTO example_users (email) VALUES (%s) RETURNING id", (email,)
            ).fetchone()
            assert row is not None
            flow = client.insert(Welcome, state={"user_id": row[0], "email": email}, conn=conn)
            if fail:
                raise RuntimeError("payment form invalid")  # the view fails after the insert
            conn.commit()
            return flow
        except RuntimeError:
            conn.rollback()
            return None


def confirm_view(dsn: str, client: gd.SyncClient, flow: int) -> bool:
    """The link in the confirmation email: deliver the signal in the view's transaction."""
    with psycopg.connect(dsn) as conn:
        stored = client.signal(
            flow, "email_confirmed", {"via": "link"}, dedup_key="confirm", conn=conn
        )
        conn.commit()
        return stored


async def run_worker_until_done(dsn: str, flow: int) -> gd.Instance:
    async with gd.Engine(dsn) as engine:
        return await wait_for_status(engine, flow, "done", "failed")


def main(dsn: str) -> None:
    setup(dsn)
    with gd.SyncClient(dsn) as client:
        kept = signup_view(dsn, client, "ada@example.com", fail=False)
        lost = signup_view(dsn, client, "bob@example.com", fail=True)
        assert kept is not None and lost is None
        # The failed view left nothing behind: no user row and no workflow.
        with psycopg.connect(dsn) as conn:
            bobs = conn.execute(
                "SELECT count(*) FROM example_users WHERE email = 'bob@example.com'"
            ).fetchone()
            flows = conn.execute(
                "SELECT count(*) FROM gen_durable WHERE fsm = %s AND state->>'email' = %s",
                (Welcome.__gd_name__, "bob@example.com"),
            ).fetchone()
        assert bobs == (0,) and flows == (0,)
        print(f"signup ada -> workflow {kept}; signup bob rolled back -> no workflow")

        assert confirm_view(dsn, client, kept)
        assert confirm_view(dsn, client, kept)  # a double click: deduplicated
        done = asyncio.run(run_worker_until_done(dsn, kept))
        print(f"workflow {kept}: {done.status} {done.result}")
        assert done.result == {"welcomed": "ada@example.com"}
        final = client.get(kept)
        assert final is not None and final.status == "done"
    print("django_enqueue: ok")


if __name__ == "__main__":
    main(database())
