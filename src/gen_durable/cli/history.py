"""``show``'s view of an instance's error history (SPEC §5): one line per error, then the
last lines of its traceback — the frame that raised and the exception."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from .common import cell

TRACEBACK_LINES = 6


def error_history(errors: Sequence[dict[str, Any]]) -> str:
    if not errors:
        return "errors (none)"
    out = [f"errors ({len(errors)}, oldest first)"]
    for entry in errors:
        message = entry.get("message") or ""
        what = f"{entry.get('type')}: {message}" if message else str(entry.get("type"))
        out.append(
            f"  {_when(entry.get('at'))}  step {entry.get('step')!r} "
            f"attempt {entry.get('attempt')}  {what}"
        )
        if entry.get("handling"):
            out.append(f"    while handling {entry['handling']}")
        lines = (entry.get("traceback") or "").rstrip("\n").splitlines()
        out.extend("    " + line for line in lines[-TRACEBACK_LINES:])
    return "\n".join(out)


def _when(at: Any) -> str:
    try:
        return cell(dt.datetime.fromisoformat(at))
    except (TypeError, ValueError):
        return cell(at)
