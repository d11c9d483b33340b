"""Testing helpers: ``drain``, ``run_step`` and a pytest plugin (SPEC §24).

``drain(engine)`` runs every runnable instance of a schema inline, through the real
SQL and the real executor, until nothing is runnable — delays and deadlines collapsed,
so a test never sleeps. ``run_step(Machine, step, ...)`` runs one step as pure code,
no database. ``pytest -p gen_durable.testing`` adds the ``gd_dsn`` and ``gd_schema``
fixtures (a migrated schema of each test's own). See ``docs/testing.md``.
"""

from __future__ import annotations

from ._drain import DrainLimitExceeded, DrainResult, drain, fire_await_deadlines
from ._run_step import run_step

try:  # the fixtures, when this module is loaded as a pytest plugin
    from .plugin import IsolatedSchema as IsolatedSchema
    from .plugin import gd_dsn as gd_dsn
    from .plugin import gd_schema as gd_schema
except ImportError:  # pytest not installed: the helpers work without it
    pass

__all__ = [
    "DrainLimitExceeded",
    "DrainResult",
    "drain",
    "fire_await_deadlines",
    "run_step",
]
