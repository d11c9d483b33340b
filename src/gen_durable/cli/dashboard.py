"""``gen-durable dashboard``: the web dashboard of SPEC §25, served by uvicorn."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import UsageError, dsn_of, schema_of

LOOPBACK = "127.0.0.1"


def add_dashboard(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard",
        parents=parents,
        help="serve the web dashboard (needs the extra gen_durable[dashboard])",
        description="Serve the web dashboard: overview, instance list and detail, and "
        "actions. It binds to loopback; any other --host needs --auth or the "
        "GEN_DURABLE_DASHBOARD_TOKEN environment variable.",
    )
    p.add_argument("--host", default=LOOPBACK, help=f"address to bind (default {LOOPBACK})")
    p.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    p.add_argument("--read-only", action="store_true", help="hide and refuse every action")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require HTTP Basic authentication")
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    # Imported here: the extra is optional and the rest of the CLI must not need it.
    from ..dashboard.security import TOKEN_ENV, is_loopback

    token = os.environ.get(TOKEN_ENV) or None
    if args.auth is not None and ":" not in args.auth:
        raise UsageError("--auth must be USER:PASSWORD")
    if not is_loopback(args.host) and args.auth is None and token is None:
        raise UsageError(
            f"refusing to serve the dashboard on {args.host} without authentication: "
            f"pass --auth USER:PASSWORD or set {TOKEN_ENV}"
        )
    try:
        import uvicorn

        from ..dashboard import create_app
    except ImportError as exc:
        raise UsageError(
            f"the dashboard needs the extra: pip install 'gen_durable[dashboard]' ({exc})"
        ) from None
    app = create_app(
        dsn_of(args),
        schema=schema_of(args),
        read_only=args.read_only,
        auth=args.auth,
        token=token,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    return 0
