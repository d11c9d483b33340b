"""What every command shares: errors, argument types, the DSN, output, imports."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pydantic

from .._db import runner
from .._dsn import resolve_dsn
from ..engine import Engine
from ..errors import ConfigurationError, DatabaseUnavailable, GenDurableError, NotFound
from ..machine import Machine
from ..migrate import installed_version
from ..registry import REGISTRY, attribute_path, find_dotted, is_machine

log = logging.getLogger("gen_durable.cli")

PROG = "gen-durable"
EXPIRED_SHOWN = 100  # `status` lists at most this many expired leases
SHOW_CHARS = 200  # `show` cuts a longer value (state, result, payload) unless --full
DEMO_SCHEMA = "gen_durable_demo"  # the demo drops and recreates it: never `public`
DEFAULT_CONCURRENCY = 10  # a worker's queue given without =N, or served by default


class UsageError(Exception):
    """A wrong command line that argparse could not see (exit code 2)."""


class CommandError(Exception):
    """The command ran and failed; the message is the whole story (exit code 1)."""


class CannotConnect(CommandError):
    """The database did not accept a connection (the worker retries these)."""


# -- argument parsing ------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: the user asked for one clear line.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


JSON_HELP = "JSON, @FILE to read it from a file, or - for stdin"


def json_arg(text: str) -> Any:
    """A JSON value given inline, as ``@FILE`` or as ``-`` (standard input): large or
    generated documents need no shell quoting."""
    if text == "-":
        where, raw = "stdin", sys.stdin.read()
    elif text.startswith("@"):
        where, raw = f"file {text[1:]!r}", read_json_file(text[1:])
    else:
        where, raw = "", text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        if not where:
            raise argparse.ArgumentTypeError(
                f"not valid JSON ({exc.msg} at column {exc.colno}): {text!r}"
            ) from None
        raise argparse.ArgumentTypeError(
            f"not valid JSON in {where} ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def read_json_file(path: str) -> str:
    if not path:
        raise argparse.ArgumentTypeError("expected @FILE: a file name after '@'")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"file {path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read file {path!r}: {exc.strerror}") from None


def queue_name_arg(text: str, given: str | None = None) -> str:
    # An empty name would fall back to the machine's queue (insert) or serve a queue
    # no machine can be given (worker): refuse it rather than guess.
    if not text.strip():
        shown = text if given is None else given
        raise argparse.ArgumentTypeError(f"a queue name must not be empty, not {shown!r}")
    return text


def queue_arg(text: str) -> tuple[str, int]:
    name, sep, conc = text.partition("=")
    if sep and not conc.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=CONCURRENCY (e.g. default=10), not {text!r}"
        )
    return queue_name_arg(name, text), int(conc) if sep else DEFAULT_CONCURRENCY


def instance_id_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an instance id is an integer, not {text!r}") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"an instance id is a positive integer, not {text!r}")
    return value


def common_options(db: bool = True, json_out: bool = True, schema: str = "public") -> Parser:
    """Options every subcommand accepts. SUPPRESS keeps a value given before the
    subcommand from being overwritten by the subcommand's own default; ``schema`` is
    only the default the help states (the command applies it)."""
    p = Parser(add_help=False)
    if db:
        p.add_argument(
            "--dsn",
            default=argparse.SUPPRESS,
            help="PostgreSQL connection string (default: $GEN_DURABLE_DSN, then $DATABASE_URL)",
        )
        p.add_argument(
            "--schema",
            default=argparse.SUPPRESS,
            help=f"schema holding the tables (default {schema})",
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


def option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


# -- shared plumbing -----------------------------------------------------------------


def schema_of(args: argparse.Namespace) -> str:
    return str(option(args, "schema") or "public")


def start_embedded(data: Path) -> str:
    """The embedded server in ``data`` (SPEC §16), started for this process."""
    from .. import embedded

    # The server package warns (through platformdirs) when XDG_RUNTIME_DIR is unset or
    # not private, then falls back to a usable directory: noise for a newcomer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return embedded.start(data)


def dsn_of(args: argparse.Namespace) -> str:
    if option(args, "embedded"):
        return start_embedded(Path.cwd() / ".pgdata")
    try:
        return resolve_dsn(option(args, "dsn"))
    except ConfigurationError:
        raise UsageError(
            "no database configured: pass --dsn, set GEN_DURABLE_DSN or DATABASE_URL, "
            "or add --embedded for a local server in ./.pgdata"
        ) from None


async def connect(dsn: str, timeout: int = 10) -> psycopg.AsyncConnection[Any]:
    try:
        return await runner.connect(dsn, timeout=timeout)
    except DatabaseUnavailable as exc:  # refused, unreachable, auth: maybe transient
        raise CannotConnect(f"cannot connect to the database: {exc}") from exc
    except ConfigurationError as exc:  # a malformed DSN: retrying cannot help
        raise CommandError(f"invalid database DSN: {exc}") from exc


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
    dsn, schema = dsn_of(args), schema_of(args)
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


def import_attribute(spec: str, what: str) -> object | None:
    """``module:attr.path`` imported (None when the attribute is missing); ``what``
    names the option in the error when the module cannot be imported."""
    module_name, _, attrs = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r} for {what}: {exc}") from exc
    return attribute_path(module, attrs.split("."))


def resolve_machine(spec: str) -> type[Machine]:
    """A machine from a registered name, ``pkg.module.Class`` or ``module:Class``."""
    obj: Any = None
    if ":" in spec:
        obj = import_attribute(spec, f"machine {spec!r}")
    else:
        named = [m for m in REGISTRY if m.__gd_name__ == spec]
        if named:
            return max(named, key=lambda m: m.__gd_version__)
        obj = find_dotted(spec)
    if is_machine(obj):
        found: type[Machine] = obj
        return found
    raise NotFound(
        spec,
        hint="give a registered name, pkg.module.Class or module:Class, and --app MODULE "
        "to import the module that defines it",
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
    if isinstance(exc, GenDurableError | CommandError | UsageError):
        return text
    if isinstance(exc, psycopg.Error):
        return f"database error: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
