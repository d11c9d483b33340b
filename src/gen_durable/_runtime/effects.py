"""An outcome's ``spawn=`` and ``send=``: encoding, the flush statements, the
drop report (SPEC §20).

``encode`` turns the effects of an outcome into :class:`Encoded` inside the step's
guarded region (bad Specs raise ``InvalidOutcome`` there and go through ``handle``).
The completer asks :func:`statements` for the statements of the items that carry
effects — placed in the flush transaction before the statement that writes their
outcomes (see ``_db/statements/effects.py``) — and hands their rows to :func:`report`
once the flush committed. Items without effects never reach this module.

A send to a finished target or to a key nobody occupies is dropped, never failing the
outcome, and counted: telemetry ``send.dropped`` (count 1; metadata ``id``, ``fsm``
of the sender, ``target``, ``name``, ``reason`` = ``"finished"`` or ``"unknown"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import telemetry
from .._db import codec
from .._db.queries import TERMINAL, InsertRows, Queries, Stmt
from .._db.statements.effects import Sent
from .._inputs import build_insert
from ..errors import EncodingError, InvalidOutcome
from ..outcomes import Effects

if TYPE_CHECKING:
    from .completer import Completion

DROPPED = "send.dropped"


@dataclass(slots=True)
class Outgoing:
    """One send, encoded: the target as an id or a key (the other None)."""

    id: int | None
    key: bytes | None
    name: str
    payload: str
    dedup_key: str | None
    target: int | str | bytes  # as the step wrote it, for the drop report


@dataclass(slots=True)
class Encoded:
    """An outcome's effects, ready for the flush."""

    fsm: str
    spawn: InsertRows | None
    sends: list[Outgoing]


def encode(outcome: Effects, fsm: str) -> Encoded:
    """Validate and encode ``spawn``/``send`` (raises inside the step's guard)."""
    spawn = None
    if outcome.spawn:
        try:
            spawn = build_insert(outcome.spawn)
        except EncodingError:
            raise
        except Exception as exc:
            raise InvalidOutcome(f"spawn: {exc}") from exc
    sends = []
    for send in outcome.send:
        codec.check_text(send.name, "gd.Send name")
        if send.dedup_key is not None:
            codec.check_text(send.dedup_key, "gd.Send dedup_key")
        payload = codec.dumps({} if send.payload is None else send.payload, "gd.Send payload")
        target_id = send.target if isinstance(send.target, int) else None
        key = None if target_id is not None else codec.key_bytes(send.target)  # type: ignore[arg-type]
        sends.append(Outgoing(target_id, key, send.name, payload, send.dedup_key, send.target))
    return Encoded(fsm, spawn, sends)


Plan = list[tuple["Completion", Outgoing | None]]
"""What each effect statement answers: (its item, the send, or None for a spawn)."""


def statements(q: Queries, items: Sequence[Completion]) -> tuple[list[Stmt[Any]], Plan]:
    """The effect statements of ``items`` (each carrying effects), in batch order."""
    stmts: list[Stmt[Any]] = []
    plan: Plan = []
    for item in items:
        effects = item.effects
        assert effects is not None
        if effects.spawn is not None:
            stmts.append(q.spawn(item.id, item.token, effects.spawn))
            plan.append((item, None))
        for send in effects.sends:
            stmts.append(
                q.send(
                    item.id, item.token, send.id, send.key, send.name, send.payload, send.dedup_key
                )
            )
            plan.append((item, send))
    return stmts, plan


def report(plan: Plan, results: Sequence[list[Any]]) -> None:
    """Count the sends the committed flush dropped. A stale outcome's statements
    answer no row: it sent nothing, and nothing is reported for it."""
    if not telemetry.listening(DROPPED):
        return
    for (item, send), rows in zip(plan, results, strict=True):
        if send is None or not rows:
            continue
        row: Sent = rows[0]
        if row.id is None or row.status in TERMINAL:
            assert item.effects is not None
            telemetry.emit(
                DROPPED,
                {"count": 1},
                {
                    "id": item.id,
                    "fsm": item.effects.fsm,
                    "target": send.target,
                    "name": send.name,
                    "reason": "unknown" if row.id is None else "finished",
                },
            )
