"""``list``, ``cancel``, ``retry`` and ``purge`` (SPEC §21, §22).

Filters are ``--where NAME=VALUE`` (repeatable), with the names of the API's keyword
filters. Times are ISO 8601 with a zone (``2026-01-31T12:00Z``) or an age
(``30d``, ``12h``, ``15m``, ``90s``: that long ago). A bulk form prints how many rows
it would change and changes nothing unless ``--yes`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic

from ..engine import Engine
from ..filters import FILTERS
from .common import (
    JSON_HELP,
    CommandError,
    UsageError,
    instance_id_arg,
    json_arg,
    open_client,
    option,
    print_json,
    problems,
    table,
)

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TIMES = ("inserted_after", "inserted_before", "updated_after", "updated_before")


def age_arg(text: str) -> dt.timedelta:
    m = _AGE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected an age such as 30d, 12h, 15m or 90s, not {text!r}"
        )
    return dt.timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])


def when_arg(text: str) -> dt.datetime:
    """An aware time: ISO 8601 with a zone, or an age meaning that long ago."""
    if _AGE.match(text):
        return dt.datetime.now(dt.UTC) - age_arg(text)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time with a zone or an age (30d), not {text!r}"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +HH:MM)")
    return value


def where_arg(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in FILTERS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of {', '.join(FILTERS)}; got {text!r}"
        )
    if name in _TIMES:
        return name, when_arg(value)
    if name == "parent":
        if not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"parent is an instance id, not {value!r}")
        return name, int(value)
    if name == "status":
        return name, [s.strip() for s in value.split(",") if s.strip()]
    return name, value


def filters_of(args: argparse.Namespace) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    for name, value in option(args, "where") or []:
        if name in filters:
            raise UsageError(f"--where {name}=... given twice (status takes a comma list)")
        filters[name] = value
    return filters


def _run(args: argparse.Namespace, call: Callable[[Engine], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        engine = await open_client(args)
        try:
            return await call(engine)
        finally:
            await engine.stop()

    return asyncio.run(run())


def cmd_list(args: argparse.Namespace) -> int:
    filters = filters_of(args)
    found = _run(args, lambda e: e.list(limit=args.limit, before=args.before, **filters))
    if option(args, "json"):
        print_json(
            [
                {k: getattr(i, k) for k in _LIST_FIELDS} | {"state": i.state, "result": i.result}
                for i in found
            ]
        )
        return 0
    rows = [[getattr(i, k) for k in _LIST_FIELDS] for i in found]
    print(table(_LIST_FIELDS, rows) if rows else "no instance matches")
    if len(found) == args.limit:
        print(f"(more may match: --before {found[-1].id} shows the next page)")
    return 0


_LIST_FIELDS = (
    "id",
    "fsm",
    "step",
    "status",
    "queue",
    "attempt",
    "parent_id",
    "updated_at",
    "last_error",
)


def _bulk(args: argparse.Namespace, action: str, filters: dict[str, Any]) -> int:
    """Count, then (with --yes) act; prints one line either way."""
    if not filters:
        raise UsageError(f"{action} --where needs at least one filter, e.g. --where status=failed")

    async def act(engine: Engine) -> tuple[int, int | None]:
        n = await engine.count_where(action, **filters)
        if not args.yes:
            return n, None
        if action == "cancel":
            done = await engine.cancel_where(
                reason=args.reason, cascade=not args.no_cascade, **filters
            )
        elif action == "retry":
            done = await engine.retry_where(**filters)
        else:
            done = await engine.purge_where(**filters)
        return n, done

    matched, changed = _run(args, act)
    verb = {"cancel": "cancelled", "retry": "retried", "purge": "purged"}[action]
    if option(args, "json"):
        print_json(
            {"action": action, "matched": matched, verb: changed, "dry_run": changed is None}
        )
    elif changed is None:
        print(f"{matched} instance(s) match; nothing changed: pass --yes to {action} them")
    else:
        print(f"{verb} {changed} instance(s) ({matched} matched)")
    return 0


def _single(args: argparse.Namespace, filters: dict[str, Any]) -> int | str | None:
    """The one instance a command names (its ID or ``--key``), or None for --where."""
    if args.id is not None and args.key is not None:
        raise UsageError("name the instance by its ID or by --key KEY, not both")
    target: int | str | None = args.id if args.key is None else args.key
    if target is not None and filters:
        raise UsageError("give an ID (or --key) or --where filters, not both")
    return target


def cmd_cancel(args: argparse.Namespace) -> int:
    filters = filters_of(args)
    target = _single(args, filters)
    if target is None:
        return _bulk(args, "cancel", filters)
    cascade = not args.no_cascade
    changed = _run(args, lambda e: e.cancel(target, args.reason, cascade=cascade))
    return _one(args, "cancel", changed, "it is already finished")


def cmd_retry(args: argparse.Namespace) -> int:
    filters = filters_of(args)
    target = _single(args, filters)
    if target is None:
        if args.step is not None or args.state is not None:
            raise UsageError("--step and --state apply to one instance, not to --where")
        return _bulk(args, "retry", filters)
    try:
        changed = _run(args, lambda e: e.retry(target, step=args.step, state=args.state))
    except pydantic.ValidationError as exc:
        raise CommandError(f"invalid state: {problems(exc)}; nothing was written") from exc
    return _one(args, "retry", changed, "only failed or cancelled instances are retried")


def _one(args: argparse.Namespace, action: str, changed: bool, why_not: str) -> int:
    if option(args, "json"):
        print_json({"id": args.id, "key": args.key, "action": action, "changed": changed})
        return 0 if changed else 1
    what = f"instance {args.id}" if args.key is None else f"key {args.key!r}"
    if not changed:
        raise CommandError(
            f"{what} was not {action}led: {why_not}"
            if action == "cancel"
            else f"{what} was not retried: {why_not}"
        )
    print(f"{what}: {'cancelled' if action == 'cancel' else 'runnable again'}")
    return 0


def add_control_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The parsers of list, cancel, retry and purge (called by ``build_parser``)."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--where",
        action="append",
        type=where_arg,
        metavar="NAME=VALUE",
        help=f"filter (repeatable, ANDed): {', '.join(FILTERS)}; status takes a comma list, "
        "times an ISO 8601 time with a zone or an age (30d = 30 days ago)",
    )
    bulk = argparse.ArgumentParser(add_help=False)
    bulk.add_argument("--yes", action="store_true", help="with --where: really change the rows")

    p = sub.add_parser("list", parents=[common, where], help="instances matching filters")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="page size (default 100)")
    p.add_argument("--before", type=int, metavar="ID", help="the page below this id")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "cancel",
        parents=[common, where, bulk],
        help="cancel an instance (and its live descendants), or every one matching --where",
    )
    p.add_argument("id", nargs="?", type=instance_id_arg, metavar="ID")
    p.add_argument("--key", metavar="KEY", help="the instance get(KEY) returns (SPEC §20)")
    p.add_argument("--no-cascade", action="store_true", help="leave live children running")
    p.add_argument("--reason", help="recorded in last_error")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "retry",
        parents=[common, where, bulk],
        help="make a failed or cancelled instance runnable again, or every one matching --where",
    )
    p.add_argument("id", nargs="?", type=instance_id_arg, metavar="ID")
    p.add_argument("--key", metavar="KEY", help="the instance get(KEY) returns (SPEC §20)")
    p.add_argument("--step", help="restart at this step instead of the current one")
    p.add_argument("--state", type=json_arg, metavar="JSON", help=f"new state ({JSON_HELP})")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser(
        "purge",
        parents=[common, where, bulk],
        help="delete finished instances (and their inboxes) now",
        description="Delete terminal instances matching the filters; children of live "
        "parents are kept. Prints how many match unless --yes.",
    )
    p.add_argument("--older-than", type=age_arg, metavar="AGE", help="last changed this long ago")
    p.add_argument("--status", help="comma-separated terminal statuses (default: all three)")
    p.set_defaults(func=cmd_purge)


def cmd_purge(args: argparse.Namespace) -> int:
    filters = filters_of(args)
    if args.older_than is not None:
        if "updated_before" in filters:
            raise UsageError("give --older-than or --where updated_before=..., not both")
        filters["updated_before"] = dt.datetime.now(dt.UTC) - args.older_than
    if args.status:
        if "status" in filters:
            raise UsageError("give --status or --where status=..., not both")
        filters["status"] = [s.strip() for s in args.status.split(",") if s.strip()]
    return _bulk(args, "purge", filters)
