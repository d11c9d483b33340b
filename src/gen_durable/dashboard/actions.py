"""The dashboard's actions, one entry each (SPEC §25).

An action is a name, the statuses it applies to and a coroutine that performs it with
the engine's client API and returns the message the page shows. The page offers an
action only where ``applies`` holds; the POST handler checks it again against the row
it reads, so a stale page cannot delete a row that came back to life.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._db import runner
from .._db.statements.common import TERMINAL
from .._db.statements.dashboard import DELETE_FINISHED
from ..engine import Engine
from ..errors import GenDurableError
from ..instance import Instance


class ActionRefused(GenDurableError):
    """The action's input is wrong or it does not apply to the instance; nothing was
    changed. The message is shown in the page."""


Perform = Callable[[Engine, Instance, Mapping[str, Any]], Awaitable[str]]


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    applies: Callable[[Instance], bool]
    perform: Perform
    confirm: str


async def _signal(engine: Engine, row: Instance, form: Mapping[str, Any]) -> str:
    name = str(form.get("name") or "").strip()
    if not name:
        raise ActionRefused("a signal needs a name")
    text = str(form.get("payload") or "").strip() or "{}"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionRefused(f"the payload is not valid JSON: {exc}") from None
    delivered = await engine.deliver(row.id, name, payload)
    if delivered == "finished":
        raise ActionRefused(f"instance {row.id} is already {row.status}: signal refused")
    return f"signal {name!r} {delivered} for instance {row.id}"


async def _delete(engine: Engine, row: Instance, form: Mapping[str, Any]) -> str:
    stmt = DELETE_FINISHED.bind(engine.queries.schema, {"id": row.id})
    deleted = await runner.fetch_one(engine._require_pool(), stmt)
    if deleted is None:
        raise ActionRefused(f"instance {row.id} is not finished: not deleted")
    return f"instance {row.id} deleted"


async def _cancel(engine: Engine, row: Instance, form: Mapping[str, Any]) -> str:
    reason = str(form.get("reason") or "").strip() or "cancelled from the dashboard"
    cascade = form.get("cascade") is not None
    if not await engine.cancel(row.id, reason, cascade=cascade):
        raise ActionRefused(f"instance {row.id} is already finished: not cancelled")
    return f"instance {row.id} cancelled" + (" with its live descendants" if cascade else "")


async def _retry(engine: Engine, row: Instance, form: Mapping[str, Any]) -> str:
    if not await engine.retry(row.id):
        raise ActionRefused(f"instance {row.id} is {row.status}: only failed or cancelled retry")
    return f"instance {row.id} is runnable again"


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "signal",
            "Send signal",
            lambda row: row.status not in TERMINAL,
            _signal,
            "Send this signal?",
        ),
        Action(
            "cancel",
            "Cancel",
            lambda row: row.status not in TERMINAL,
            _cancel,
            "Cancel this instance?",
        ),
        Action(
            "retry",
            "Retry",
            lambda row: row.status in ("failed", "cancelled"),
            _retry,
            "Make this instance runnable again?",
        ),
        Action(
            "delete",
            "Delete",
            lambda row: row.status in TERMINAL,
            _delete,
            "Delete this finished instance and its signals?",
        ),
    )
}
