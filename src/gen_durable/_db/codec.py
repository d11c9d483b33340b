"""JSON and text encoding at the boundary (SPEC §15, §18.3).

Values are encoded to JSON *text* here and cast to ``jsonb`` inside the statement
(``$1::text::jsonb``), so PostgreSQL stores real objects and never a jsonb string
holding encoded JSON. Everything PostgreSQL would refuse (NUL characters, NaN) is
refused here first, with an :class:`EncodingError`, before anything is written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format
from pydantic import BaseModel

from ..errors import EncodingError

# An escaped NUL that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any, what: str = "value") -> str:
    """Encode a JSON value (or a pydantic model) to compact JSON text."""
    if value is None:
        return "null"
    if type(value) is dict and not value:
        return "{}"
    try:
        text = value.model_dump_json() if isinstance(value, BaseModel) else _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise EncodingError(f"{what} cannot be encoded as JSON: {exc}") from exc
    except Exception as exc:  # pydantic serialisation errors
        raise EncodingError(f"{what} cannot be encoded as JSON: {exc}") from exc
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise EncodingError(f"{what} contains a NUL character (\\u0000), which jsonb cannot store")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodingError(
                f"{what} contains a lone surrogate ({exc.object[exc.start : exc.end]!r}), "
                "which is not valid UTF-8 and cannot be stored"
            ) from exc
    if "NaN" in text or "Infinity" in text:
        # pydantic writes NaN/Infinity as JSON null by default, json.dumps refuses them;
        # this catches only literal tokens, which jsonb would reject.
        try:
            json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise EncodingError(f"{what} contains {exc}, which JSON cannot store") from exc
    return text


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def check_text(value: str, what: str) -> str:
    """A text column value: PostgreSQL text cannot hold NUL characters."""
    if not isinstance(value, str):
        raise EncodingError(f"{what} must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise EncodingError(f"{what} contains a NUL character, which PostgreSQL text cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodingError(f"{what} is not valid UTF-8 (lone surrogate)") from exc
    return value


def storable(text: str) -> str:
    """Free text for a text column: NULs and lone surrogates escaped, never refused."""
    text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def key_bytes(value: bytes | str | None) -> bytes | None:
    """``unique_key`` accepts bytes (verbatim) or str (its UTF-8 bytes) — SPEC §11."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodingError("unique_key is not valid UTF-8 (lone surrogate)") from exc
    raise EncodingError(f"unique_key must be bytes or str, not {type(value).__name__}")


class JsonTextBinary(Dumper):
    """JSON text (already encoded by :func:`dumps`) as a binary ``jsonb`` value: the
    format's version byte, then the text — spliced as it is, never encoded twice.
    Registered by oid only (``register_dumper(None, …)``), so it serves a COPY's
    ``set_types(["jsonb", …])`` and nothing else."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()
