"""gen_durable — a durable finite-state-machine engine backed by PostgreSQL.

Each machine instance is one row; an asyncio runtime claims runnable rows with
``SKIP LOCKED``, runs one step, and commits the step's outcome before anything
proceeds. See the README for a tour and ``docs/`` for guides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import embedded, telemetry
from .client import SyncClient
from .engine import Engine
from .errors import (
    Cancel,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    Duplicate,
    EncodingError,
    GenDurableError,
    InvalidFilter,
    InvalidMachine,
    InvalidOutcome,
    NoSuchInstance,
    NotFound,
    OutcomeRefused,
    SchemaError,
)
from .flow import RateLimit
from .instance import Instance
from .machine import FSM, Child, Context, Job, Signal, State
from .migrate import LATEST_VERSION, migrate, migrate_down, migrate_sync, migration_sql
from .outcomes import Await, Done, Next, Outcome, Replay, ScheduleChilds, Send, Spec, Stop
from .schedule import Schedule
from .steps import step

if TYPE_CHECKING:
    from . import testing


def __getattr__(name: str) -> Any:
    # ``gd.testing`` without importing it (and pytest) with the package.
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "FSM",
    "LATEST_VERSION",
    "Await",
    "Cancel",
    "Child",
    "ConfigurationError",
    "Context",
    "DatabaseError",
    "DatabaseUnavailable",
    "Done",
    "Duplicate",
    "EncodingError",
    "Engine",
    "GenDurableError",
    "Instance",
    "InvalidFilter",
    "InvalidMachine",
    "InvalidOutcome",
    "Job",
    "Next",
    "NoSuchInstance",
    "NotFound",
    "Outcome",
    "OutcomeRefused",
    "RateLimit",
    "Replay",
    "Schedule",
    "ScheduleChilds",
    "SchemaError",
    "Send",
    "Signal",
    "Spec",
    "State",
    "Stop",
    "SyncClient",
    "embedded",
    "migrate",
    "migrate_down",
    "migrate_sync",
    "migration_sql",
    "step",
    "telemetry",
    "testing",
]
