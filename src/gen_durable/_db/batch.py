"""Batches as ONE jsonb parameter: each row layout declared once (SPEC §17, §18.6).

A batch (new rows, outcomes, claim lists) travels as one JSON array of row arrays,
unpacked in SQL with ``jsonb_array_elements`` — one statement for any number of rows
and no 65,535-parameter ceiling. Building that text in Python is ~25x cheaper than
adapting a dozen parallel Python lists to PostgreSQL arrays, which was the engine's
largest per-step CPU cost; values that are already JSON (state, result) are spliced
in verbatim, never encoded twice (§18.3).

A :class:`Layout` names a row's fields in order, each with a :class:`Kind` that says
both how SQL reads element *i* (``(e->>0)::int8 AS id``) and how Python writes it.
Both sides are derived from that one declaration: :meth:`Layout.unpack` gives the SQL
column list, and the encoders are f-strings generated from the declaration at import
time — as fast as a hand-written f-string, and never out of step with the SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

# C-accelerated JSON string encoder of the standard library.
_enc: Callable[[str], str] = encode_basestring_ascii


def _opt(value: str | None) -> str:
    return "null" if value is None else _enc(value)


def _num(value: float | int | None) -> str:
    return "null" if value is None else repr(value)


def _names(value: str | Sequence[str] | None) -> str:
    # A lone str is a set of one name: the encoded form of a one-name Await.
    if value is None:
        return "null"
    if isinstance(value, str):
        return "[" + _enc(value) + "]"
    return "[" + ",".join(map(_enc, value)) + "]"


REQUIRED: Any = object()
"""A field the keyword encoder has no default for."""


@dataclass(frozen=True, slots=True)
class Kind:
    """How one field travels: ``sql`` reads the element (``{}`` is ``e->i`` for jsonb,
    ``e->>i`` for text), ``py`` is f-string source writing the value ``$`` as JSON."""

    sql: str
    py: str
    jsonb: bool = False  # read with ->, not ->>
    default: Any = None  # the keyword encoder's default (REQUIRED: none)
    trailing: bool = False  # an optional last element, left out when None


INT8 = Kind("({})::int8", "{$}", default=REQUIRED)
INT4 = Kind("({})::int", "{$}", default=REQUIRED)
INT2 = Kind("({})::int2", "{$}", default=REQUIRED)
OPT_INT8 = Kind("({})::int8", "{_num($)}")
FLOAT8 = Kind("({})::float8", "{$!r}", default=0.0)
OPT_FLOAT8 = Kind("({})::float8", "{_num($)}")
TEXT = Kind("{}", "{_enc($)}", default=REQUIRED)
OPT_TEXT = Kind("{}", "{_opt($)}")
BOOL = Kind("({})::bool", '{"true" if $ else "false"}', default=False)
HEX_BYTES = Kind("decode({}, 'hex')", '{"null" if $ is None else _enc($.hex())}')
"""bytes (or None) as hex text: JSON has no bytes."""
TIMESTAMPTZ = Kind("({})::timestamptz", '{"null" if $ is None else _enc($.isoformat())}')
NAMES = Kind(
    "(CASE WHEN jsonb_typeof({0}) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text({0})) END)",
    "{_names($)}",
    jsonb=True,
)
"""A set of names (a sequence of str, or one str) as text[]; None reads as SQL NULL."""
INT8_ARRAY = Kind("({})::int8[]", '"{{{",".join(map(str, $))}}}"', default=())
"""A sequence of ints as an int8[] literal; digits and commas need no JSON escaping."""
JSON_OR_EMPTY = Kind("{}", '{$ or "{}"}', jsonb=True)
"""JSON text spliced as it is; None stores ``{}``."""
JSON = Kind("{}", '{$ or "null"}', jsonb=True)
"""JSON text spliced as it is; None stores JSON ``null``."""
JSON_OR_SQL_NULL = Kind("nullif({}, 'null'::jsonb)", '{$ or "null"}', jsonb=True)
"""JSON text spliced as it is; None reads as SQL NULL (keep the stored value)."""
TRAILING_JSON = Kind("{}", '{"" if $ is None else "," + $}', jsonb=True, trailing=True)
"""A JSON object spliced only when there is one: a row without it reads as NULL there,
and is not a byte longer."""


class Layout:
    """The fields of one batch row, in order; the SQL unpack and the encoders."""

    def __init__(self, name: str, fields: Sequence[tuple[str, Kind]]) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.names = tuple(n for n, _ in self.fields)
        if any(k.trailing for _, k in self.fields[:-1]):
            raise TypeError(f"layout {name}: only the last field may be trailing")
        self.row: Callable[[Any], str] = self._compile(
            "row", "o", [f"o.{n}" for n in self.names], "return {}"
        )
        """The JSON array text of one row from an object with the fields as attributes."""
        keywords = ", ".join(
            n if k.default is REQUIRED else f"{n}={k.default!r}" for n, k in self.fields
        )
        self.element: Callable[..., str] = self._compile(
            "element", "*, " + keywords, list(self.names), "return {}"
        )
        """The JSON array text of one row from keywords (declared defaults)."""
        loop = ", ".join(f"v_{n}" for n in self.names)
        self.columns: Callable[..., str] = self._compile(
            "columns",
            ", ".join(f"c_{n}" for n in self.names),
            [f"v_{n}" for n in self.names],
            f'return "[" + ",".join([{{}} for {loop} in zip('
            + ", ".join(f"c_{n}" for n in self.names)
            + ', strict=True)]) + "]"',
        )
        """The JSON array of every row from parallel column sequences."""
        self.columns_of: Callable[[Any], str] = self._compile(
            "columns_of",
            "o",
            [f"v_{n}" for n in self.names],
            f'return "[" + ",".join([{{}} for {loop} in zip('
            + ", ".join(f"o.{n}" for n in self.names)
            + ', strict=True)]) + "]"',
        )
        """The JSON array of every row from an object holding one sequence per field."""

    def _compile(self, fn: str, args: str, values: list[str], body: str) -> Callable[..., str]:
        parts: list[str] = []
        for (_, kind), value in zip(self.fields, values, strict=True):
            parts.append(("" if kind.trailing or not parts else ",") + kind.py.replace("$", value))
        fstring = "f'''[" + "".join(parts) + "]'''"
        source = f"def {fn}({args}):\n    " + body.format(fstring) + "\n"
        scope: dict[str, Any] = {"_enc": _enc, "_opt": _opt, "_num": _num, "_names": _names}
        exec(compile(source, f"<layout {self.name}.{fn}>", "exec"), scope)
        made: Callable[..., str] = scope[fn]
        return made

    def unpack(self, element: str = "e") -> str:
        """The SQL select list reading one row from the jsonb array ``element``."""
        return ", ".join(
            kind.sql.format(f"{element}{'->' if kind.jsonb else '->>'}{i}") + f" AS {name}"
            for i, (name, kind) in enumerate(self.fields)
        )


def array(rows: Sequence[str]) -> str:
    """Row texts (``Layout.row`` / ``Layout.element``) as the batch's JSON array."""
    return "[" + ",".join(rows) + "]"
