"""``insert``, ``signal``, ``show``, ``status`` and ``demo``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pydantic

from .._db import runner
from .._db.queries import STATUSES
from .._db.statements import admin
from ..client import Delivery
from ..instance import Instance
from ..machine import Child, Signal
from .common import (
    DEMO_SCHEMA,
    EXPIRED_SHOWN,
    SHOW_CHARS,
    CommandError,
    UsageError,
    cell,
    connect,
    dsn_of,
    import_apps,
    open_client,
    option,
    print_json,
    problems,
    require_schema,
    resolve_machine,
    schema_of,
    table,
)
from .history import error_history


def cmd_insert(args: argparse.Namespace) -> int:
    if args.unique_scope is not None and args.unique_key is None:
        # A scope alone would be dropped without a word: it only says when a key is
        # occupied, and there is no key.
        raise UsageError("--unique-scope needs --unique-key (the scope applies to a key)")
    import_apps(args.path, args.app)
    machine = resolve_machine(args.machine)
    options: dict[str, Any] = {"priority": args.priority}
    names = ("state", "args", "step", "queue", "partition_key", "partition_limit", "rate_limit")
    for name in (*names, "unique_key", "schedule_in"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.unique_scope:
        options["unique_scope"] = [s.strip() for s in args.unique_scope.split(",") if s.strip()]

    async def run() -> int:
        engine = await open_client(args)
        try:
            return await engine.insert(machine, **options)
        except pydantic.ValidationError as exc:
            raise CommandError(
                f"invalid state for {machine.__gd_name__}: {problems(exc)}; nothing was written"
            ) from exc
        finally:
            await engine.stop()

    new_id = asyncio.run(run())
    if option(args, "json"):
        print_json({"id": new_id, "fsm": machine.__gd_name__, "version": machine.__gd_version__})
    else:
        print(new_id)
    return 0


def target_of(args: argparse.Namespace) -> tuple[int | str, str]:
    """The instance a command names — its ID or ``--key`` (exactly one) — and how to
    say it in a message."""
    if (args.id is None) == (args.key is None):
        raise UsageError("name the instance by its ID or by --key KEY (exactly one of them)")
    if args.key is not None:
        return args.key, f"key {args.key!r}"
    return args.id, f"instance {args.id}"


def cmd_signal(args: argparse.Namespace) -> int:
    target, what = target_of(args)

    async def run() -> tuple[Delivery, Instance | None]:
        engine = await open_client(args)
        try:
            found = await engine.deliver(target, args.name, args.payload, dedup_key=args.dedup_key)
            return found, await engine.get(target)
        finally:
            await engine.stop()

    found, inst = asyncio.run(run())
    status = inst.status if inst else None
    if found == "finished":
        raise CommandError(
            f"{what} is {status}: a finished instance takes no signals; nothing was stored"
        )
    duplicate = found == "duplicate"
    if option(args, "json"):
        print_json(
            {
                "id": inst.id if inst else args.id,
                "name": args.name,
                "stored": not duplicate,
                "duplicate": duplicate,
                "status": status,
            }
        )
    elif duplicate:
        print(
            f"signal {args.name!r} for {what}: duplicate, dedup_key "
            f"{args.dedup_key!r} was already stored; nothing new stored (now {status})"
        )
    else:
        print(f"signal {args.name!r} stored for {what} (now {status})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    target, what = target_of(args)

    async def run() -> tuple[Instance, list[Signal], list[Child]]:
        engine = await open_client(args)
        try:
            inst = await engine.get(target)
            if inst is None:
                no = f"no instance with id {args.id}" if args.key is None else f"no {what}"
                raise CommandError(f"{no} in schema {schema_of(args)!r}")
            return inst, await engine.inbox(inst.id), await engine.children(inst.id)
        finally:
            await engine.stop()

    inst, inbox, children = asyncio.run(run())
    fields = fields_of(inst)
    if option(args, "json"):
        print_json(
            {
                **fields,
                "inbox": [fields_of(s) for s in inbox],
                "children": [fields_of(c) for c in children],
            }
        )
        return 0
    limit = None if args.full else SHOW_CHARS
    print(f"instance {inst.id}: {inst.fsm} v{inst.fsm_version}")
    if inst.status == "awaiting_signal" and inst.awaits:
        print(f"  {waiting(inst)}")
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        if key not in ("id", "fsm", "fsm_version", "errors"):
            print(f"  {key.ljust(width)}  {cell(clip(value, limit))}")
    print(f"\ninbox ({len(inbox)} signal(s))")
    if inbox:
        print(items_table(inbox, limit))
    print(f"\nchildren ({len(children)})")
    if children:
        print(items_table(children, limit))
    print("\n" + error_history(inst.errors))
    return 0


def waiting(inst: Instance) -> str:
    """What a parked instance waits for (SPEC §19): its set of names, and its deadline."""
    names = " | ".join(inst.awaits or ())
    if inst.await_deadline is None:
        return f"waits for {names} (no deadline)"
    return f"waits for {names} until {cell(inst.await_deadline)} (then runs {inst.step!r} again)"


def clip(value: Any, limit: int | None) -> Any:
    """``value``'s cell, cut to ``limit`` characters with a note of what was cut: one
    large state or payload would otherwise bury the rest of the instance."""
    text = cell(value)
    if limit is None or len(text) <= limit:
        return value  # unchanged, so the table still aligns numbers
    return f"{text[:limit]}... ({len(text) - limit} more chars; --full shows all)"


def fields_of(item: Any) -> dict[str, Any]:
    """A dataclass's fields by name, in declaration order (no deep copy)."""
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}


def values(items: Sequence[Any]) -> list[list[Any]]:
    """Dataclass rows as table rows, one cell per field."""
    return [list(fields_of(item).values()) for item in items]


def items_table(items: list[Signal] | list[Child], limit: int | None) -> str:
    """Inbox signals or children as a table, one column per field."""
    rows = [fields_of(item) for item in items]
    return table(list(rows[0]), [[clip(v, limit) for v in row.values()] for row in rows])


def cmd_status(args: argparse.Namespace) -> int:
    dsn, schema = dsn_of(args), schema_of(args)

    async def run() -> tuple[
        int,
        list[admin.QueueCount],
        list[admin.Backlog],
        list[admin.ExpiredLease],
        list[admin.HandedBack],
    ]:
        async with await connect(dsn) as conn:
            version = await require_schema(conn, schema)
            # One snapshot, so the reads agree with each other.
            async with conn.transaction():
                await runner.fetch(conn, admin.SNAPSHOT.bind(schema))
                counts = await runner.fetch(conn, admin.COUNTS.bind(schema))
                backlog = await runner.fetch(conn, admin.BACKLOG.bind(schema))
                limit = {"limit": EXPIRED_SHOWN}
                expired = await runner.fetch(conn, admin.EXPIRED_LEASES.bind(schema, limit))
                handed_back = await runner.fetch(conn, admin.HANDED_BACK.bind(schema))
            return version, counts, backlog, expired, handed_back

    version, counts, backlog, expired, handed_back = asyncio.run(run())
    statuses = STATUSES
    per_queue: dict[str, dict[str, int]] = {}
    for c in counts:
        per_queue.setdefault(c.queue, dict.fromkeys(statuses, 0))[c.status] = c.count
    if option(args, "json"):
        print_json(
            {
                "schema": schema,
                "version": version,
                "queues": per_queue,
                "backlog": [fields_of(r) for r in backlog],
                "expired_leases": [fields_of(r) for r in expired],
                "waiting_for_machine": [fields_of(r) for r in handed_back],
            }
        )
        return 0
    print(f"schema {schema!r} (version {version})\n")
    if not per_queue:
        print("no instances")
    else:
        rows = [[q, *(c[s] for s in statuses), sum(c.values())] for q, c in per_queue.items()]
        print(table(["queue", *statuses, "total"], rows))
    if backlog:
        print("\nrunnable backlog")
        print(table(["queue", "ready", "scheduled", "oldest ready (s)"], values(backlog)))
    many = f" or more (the oldest {EXPIRED_SHOWN} shown)" if len(expired) >= EXPIRED_SHOWN else ""
    print(f"\nexecuting with an expired lease: {len(expired)}{many}")
    if expired:
        headers = ["id", "fsm", "step", "queue", "locked_by", "expired for (s)"]
        print(table(headers, values(expired)))
    if handed_back:
        # Only when there are some: outside a deploy this is the sign of a node
        # missing code, and an empty section would be noise every other time.
        waiting = sum(r.rows for r in handed_back)
        print(f"\nrunnable rows handed back by a node that lacks their machine: {waiting}")
        print(table(["fsm", "version", "rows", "last reason"], values(handed_back)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.size < 1:
        raise UsageError("--size must be at least 1")
    return run_demo(
        dsn=option(args, "dsn"),
        schema=option(args, "schema") or DEMO_SCHEMA,
        size=args.size,
        embedded=bool(option(args, "embedded")),
    )
