"""``gen-durable migrate`` (up, down, status, sql)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg

from .._db import runner
from .._db.statements import admin
from ..migrate import LATEST_VERSION, installed_version, migrate, migrate_down, migration_sql
from .common import CommandError, connect, dsn_of, option, print_json, schema_of


def cmd_migrate(args: argparse.Namespace) -> int:
    target: int | None = args.to
    if target is not None and not 0 <= target <= LATEST_VERSION:
        raise CommandError(f"unknown schema version {target}; versions are 0..{LATEST_VERSION}")
    dsn, schema = dsn_of(args), schema_of(args)

    async def run() -> tuple[int, int]:
        async with await connect(dsn) as conn:
            current = await installed_version(conn, schema)
            goal = target if target is not None else (0 if args.down else LATEST_VERSION)
            if args.down and goal > current:
                raise CommandError(
                    f"schema {schema!r} is at version {current}; cannot migrate down to {goal} "
                    "(drop --down to go up)"
                )
            if not args.down and goal < current:
                raise CommandError(
                    f"schema {schema!r} is at version {current}, above {goal}; "
                    "add --down to migrate down"
                )
            if args.down and goal == 0 and current > 0 and not args.yes:
                await _drop_if_empty(conn, schema)
            elif args.down:
                await migrate_down(conn, schema=schema, version=goal)
            else:
                await migrate(conn, schema=schema, version=goal)
            return current, goal

    before, after = asyncio.run(run())
    if option(args, "json"):
        print_json({"schema": schema, "from": before, "to": after, "latest": LATEST_VERSION})
    elif before == after:
        print(f"schema {schema!r} is already at version {after}")
    else:
        print(f"schema {schema!r} migrated from version {before} to {after}")
    return 0


async def _drop_if_empty(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Go down to version 0 (which drops the tables) only if they hold no rows.

    Counted first without a lock, so refusing costs no more than a read: a big table
    must not stall the workers for a mistyped command. When both are empty, they are
    locked and checked again in the dropping transaction, so no row inserted in
    between is dropped unseen."""
    await _refuse_rows(conn, schema)
    async with conn.transaction():
        await runner.fetch(conn, admin.LOCK_TABLES.bind(schema))
        await _refuse_rows(conn, schema)
        await migrate_down(conn, schema=schema, version=0)


async def _refuse_rows(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    row = await runner.fetch_one(conn, admin.TABLE_ROWS.bind(schema))
    instances, signals = (row.instances, row.signals) if row else (0, 0)
    if instances or signals:
        raise CommandError(
            f"schema {schema!r} holds {instances} instance row(s) and {signals} signal(s); "
            "migrating down to version 0 drops them with the tables. Nothing was dropped: "
            "pass --yes to drop them"
        )


def cmd_migrate_status(args: argparse.Namespace) -> int:
    dsn, schema = dsn_of(args), schema_of(args)

    async def run() -> int:
        async with await connect(dsn) as conn:
            return await installed_version(conn, schema)

    installed = asyncio.run(run())
    pending = LATEST_VERSION - installed
    if option(args, "json"):
        print_json(
            {"schema": schema, "installed": installed, "latest": LATEST_VERSION, "pending": pending}
        )
    else:
        state = "up to date" if not pending else f"{pending} migration(s) pending"
        print(
            f"schema {schema!r}: installed version {installed}, latest {LATEST_VERSION} ({state})"
        )
    return 0


def cmd_migrate_sql(args: argparse.Namespace) -> int:
    if args.version is not None:
        versions = [args.version]
    else:
        versions = list(range(1, LATEST_VERSION + 1))
        if args.down:
            versions.reverse()
    for version in versions:  # migration_sql refuses unknown versions
        text = migration_sql(version, schema=schema_of(args), down=args.down)
        print(f"-- gen_durable schema version {version} ({'down' if args.down else 'up'})")
        print(text.rstrip())
        print()
    return 0
