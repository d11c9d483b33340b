"""Entries of an instance's error history (SPEC §5).

Each error a step (or its ``handle``) raises becomes one entry, kept with the row in
the ``errors`` jsonb column next to the outcome that followed — so an instance that
failed twice and then succeeded still shows what went wrong. The statement adds the
database's ``at`` time and keeps the last few entries (``queries.ERROR_HISTORY``).

The traceback is bounded: a deep stack or a huge message must not bloat a hot row.
It keeps the *end*, which holds the frame that raised, and cuts an overlong exception
line first so the frames survive. The text is made storable (no NUL, no lone
surrogate) before it is encoded, so the JSON is always valid jsonb.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from .._db import codec

TRACEBACK_LIMIT = 4000
"""Characters of traceback kept per entry (the end of it)."""
MESSAGE_LIMIT = 1000
"""Characters of the message kept per entry (the start of it)."""

_CUT = "… (traceback cut to its last lines)\n"

log = logging.getLogger("gen_durable.step")
"""Step errors, each with its traceback: a child of ``gen_durable``, so an application
whose ``handle`` expects some errors can quiet them alone."""


def type_name(error: BaseException) -> str:
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _message(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not lose the entry
        text = f"<{type(error).__name__}: str() failed>"
    text = codec.storable(text)
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "…"


def format_traceback(error: BaseException) -> str:
    """The traceback of ``error`` (chained causes included), at most TRACEBACK_LIMIT
    characters: its end, starting at a line."""
    lines = traceback.format_exception(error)
    last = traceback.format_exception_only(error)
    if lines[-len(last) :] == last:  # not so for exception groups: leave those whole
        tail = "".join(last)
        if len(tail) > MESSAGE_LIMIT:
            lines = [*lines[: -len(last)], tail[:MESSAGE_LIMIT] + "… (message cut)\n"]
    chunks = [codec.storable(chunk) for chunk in lines]
    if sum(map(len, chunks)) <= TRACEBACK_LIMIT:
        return "".join(chunks)
    # Keep whole chunks (a frame is its "File" line and its code line) from the end,
    # so the cut falls at a frame and the raising frame and the exception survive.
    kept: list[str] = []
    room = TRACEBACK_LIMIT - len(_CUT)
    for chunk in reversed(chunks):
        if len(chunk) > room:
            break
        kept.append(chunk)
        room -= len(chunk)
    return _CUT + "".join(reversed(kept))


def error_entry(error: BaseException, step: str, attempt: int, **extra: str) -> str:
    """One entry as JSON text (the statement adds ``at``)."""
    entry: dict[str, Any] = {
        "step": step,
        "attempt": attempt,
        "type": type_name(error),
        "message": _message(error),
        "traceback": format_traceback(error),
    }
    entry.update((k, codec.storable(v)) for k, v in extra.items())
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def log_step_error(
    instance_id: int, machine: str, step: str, attempt: int, error: BaseException
) -> None:
    log.warning(
        "instance %s (%s) step %r attempt %d raised %s: %s",
        instance_id,
        machine,
        step,
        attempt,
        type_name(error),
        _message(error),
        exc_info=error,
    )
