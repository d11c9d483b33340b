"""The argument parser: every command, its options and its help."""

from __future__ import annotations

import argparse

from .. import __version__
from .._runtime.config import cli_options, kind_of
from .common import (
    DEFAULT_CONCURRENCY,
    DEMO_SCHEMA,
    JSON_HELP,
    PROG,
    SHOW_CHARS,
    Parser,
    common_options,
    instance_id_arg,
    json_arg,
    queue_arg,
    queue_name_arg,
)
from .control import add_control_commands
from .dashboard import add_dashboard
from .flow import cmd_limits_delete, cmd_limits_list, cmd_limits_set, cmd_schedules
from .graph import cmd_graph
from .instances import cmd_demo, cmd_insert, cmd_show, cmd_signal, cmd_status
from .migrate import cmd_migrate, cmd_migrate_sql, cmd_migrate_status
from .worker import cmd_worker

KEY_HELP = "address the instance by its unique_key (text, stored as UTF-8) instead of an ID"


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(
        prog=PROG,
        description="Run and operate gen_durable machines on PostgreSQL.",
        parents=[common],
        epilog="Run `gen-durable COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"gen_durable {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="migrate the schema (up by default), or show status / print SQL",
        description="Bring the schema to the latest version, or to --to N. "
        "With --down, go down to version 0 (or --to N), dropping what gen_durable owns; "
        "going to 0 is refused while the tables hold rows, unless --yes.",
    )
    p.add_argument("--to", type=int, metavar="N", help="target schema version")
    p.add_argument("--down", action="store_true", help="migrate down (default target 0)")
    p.add_argument(
        "--yes",
        action="store_true",
        help="with --down to 0: drop the tables even if they hold instances or signals",
    )
    p.set_defaults(func=cmd_migrate, migrate_cmd=None)
    msub = p.add_subparsers(dest="migrate_cmd", metavar="{status,sql}", parser_class=Parser)
    ps = msub.add_parser("status", parents=[common], help="installed vs latest schema version")
    ps.set_defaults(func=cmd_migrate_status)
    pq = msub.add_parser(
        "sql",
        parents=[common_options(db=False, json_out=False)],
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
        parents=[common_options(json_out=False)],
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
        "--schedules",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="a gd.Schedule or a list of them to run on this node, e.g. "
        "myapp.jobs:SCHEDULES (repeatable; give every worker the same list)",
    )
    p.add_argument(
        "--queue",
        action="append",
        type=queue_arg,
        default=[],
        metavar="NAME=N",
        help=f"serve queue NAME with concurrency N (default {DEFAULT_CONCURRENCY}; repeatable). "
        f"Without it: every queue of the machines imported, each at {DEFAULT_CONCURRENCY} "
        "(just 'default' when there are none)",
    )
    # The engine options marked for the command line (SPEC §8 knobs); unset ones keep
    # the engine's own defaults (shown in --help).
    for option in cli_options():
        kind = kind_of(option)
        # A None default is sized per queue, and its help says how.
        default = "" if option.default is None else f" (default {option.default:g})"
        p.add_argument(
            "--" + option.name.replace("_", "-"),
            type=kind,
            metavar="N" if kind is int else "SECONDS",
            help=f"{option.metadata['help']}{default}",
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
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus /metrics on port N (needs the extra gen_durable[prometheus])",
    )
    p.add_argument(
        "--metrics-host", default="0.0.0.0", help="address of /metrics (default 0.0.0.0)"
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
    group.add_argument(
        "--state", type=json_arg, metavar="JSON", help=f"initial state ({JSON_HELP})"
    )
    group.add_argument(
        "--args", type=json_arg, metavar="JSON", help=f"job arguments, = state ({JSON_HELP})"
    )
    p.add_argument("--step", help="start at this step instead of the machine's initial one")
    p.add_argument("--queue", type=queue_name_arg, help="queue (default: the machine's)")
    p.add_argument("--priority", type=int, default=0, help="lower runs earlier (default 0)")
    p.add_argument("--partition-key", help="never run concurrently with the same key")
    p.add_argument(
        "--partition-limit", type=int, metavar="K", help="up to K of the key at once (default 1)"
    )
    p.add_argument("--rate-limit", metavar="NAME[:PART]", help="take a token per step start")
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
        "The instance is named by its ID or, with --key, by the unique key it occupies. "
        "Fails (exit 1) for an unknown id or key, or a finished instance.",
    )
    p.add_argument("id", type=instance_id_arg, metavar="ID", nargs="?")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--key", metavar="KEY", help=KEY_HELP)
    p.add_argument(
        "--payload", type=json_arg, metavar="JSON", help=f"payload (default {{}}; {JSON_HELP})"
    )
    p.add_argument("--dedup-key", metavar="KEY", help="store at most once per instance and key")
    p.set_defaults(func=cmd_signal)

    p = sub.add_parser(
        "show",
        parents=[common],
        help="one instance with its inbox and children",
        description="One instance, named by its ID or, with --key, by its unique key: the "
        "key's occupant, else the latest instance that carried it.",
    )
    p.add_argument("id", type=instance_id_arg, metavar="ID", nargs="?")
    p.add_argument("--key", metavar="KEY", help=KEY_HELP)
    p.add_argument(
        "--full",
        action="store_true",
        help=f"print every value whole (the table cuts values past {SHOW_CHARS} characters, "
        "saying how many were cut; --json never does)",
    )
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "status",
        parents=[common],
        help="counts per queue and status, backlog age, expired leases",
    )
    p.set_defaults(func=cmd_status)

    _flow_commands(sub, common)

    p = sub.add_parser(
        "graph",
        parents=[common_options(db=False, json_out=False)],
        help="print a machine's steps and transitions as a Mermaid state diagram",
        description="MACHINE is module:Class, a dotted path or a registered name. The "
        "transitions are read from the source of its @gd.step methods (or of the "
        "if step == 'x' / match step branches of a step dispatcher): Next and "
        "ScheduleChilds to a method (Class.step) or a literal step name, Await, Done "
        "and Stop. Paste the output into any Mermaid renderer.",
    )
    p.add_argument("machine", metavar="MACHINE")
    p.add_argument("--app", action="append", default=[], metavar="MODULE", help="import first")
    p.add_argument("--path", action="append", default=[], metavar="DIR", help="add to sys.path")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser(
        "demo",
        parents=[common_options(json_out=False, schema=DEMO_SCHEMA)],
        help="run the guided demo (embedded PostgreSQL unless a DSN is configured)",
        description="Run a small order-processing scenario that uses every primitive, "
        "with live progress and a summary. Without --dsn (or GEN_DURABLE_DSN / "
        "DATABASE_URL) it starts an embedded PostgreSQL server in ./.pgdata. The demo "
        f"schema (default {DEMO_SCHEMA}) is dropped and recreated on every run.",
    )
    p.add_argument("--size", type=int, default=40, help="number of orders (default 40)")
    p.set_defaults(func=cmd_demo)
    add_control_commands(sub, common)

    add_dashboard(sub, [common_options(json_out=False)])
    return parser


def _flow_commands(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``limits set|list|delete`` and ``schedules`` (SPEC §23)."""
    p = sub.add_parser(
        "limits",
        parents=[common],
        help="rate limits every node enforces: set, list, delete",
        description="Token buckets stored in the database: RATE starts per --per seconds, "
        "at most --burst at once. Rows opt in with rate_limit='NAME' or 'NAME:part'.",
    )
    p.set_defaults(func=cmd_limits_list)
    lsub = p.add_subparsers(dest="limits_cmd", metavar="{set,list,delete}", parser_class=Parser)
    ps = lsub.add_parser("set", parents=[common], help="create or change a rate limit")
    ps.add_argument("name", metavar="NAME")
    ps.add_argument("rate", type=float, metavar="RATE", help="tokens per --per seconds")
    ps.add_argument("--per", type=float, default=1.0, metavar="SECONDS", help="default 1")
    ps.add_argument("--burst", type=float, metavar="N", help="bucket size (default: RATE)")
    ps.set_defaults(func=cmd_limits_set)
    pl = lsub.add_parser("list", parents=[common], help="every rate limit")
    pl.set_defaults(func=cmd_limits_list)
    pd = lsub.add_parser("delete", parents=[common], help="delete a rate limit")
    pd.add_argument("name", metavar="NAME")
    pd.set_defaults(func=cmd_limits_delete)

    p = sub.add_parser(
        "schedules",
        parents=[common],
        help="recurring schedules the nodes registered, with their next slot",
    )
    p.set_defaults(func=cmd_schedules)
