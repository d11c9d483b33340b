"""Statements declared once, by name, with their parameters and result columns.

A :class:`Statement` is the whole contract of one SQL statement: a name, one line on
why it exists, its text (``{s}`` stands for the quoted schema, ``{channel}`` for the
schema's notification channel), its parameters with their PostgreSQL types, and the
dataclass its rows decode into. Declaring one registers it in :data:`REGISTRY`; the
every-statement test PREPAREs each registered statement on a real server with the
declared parameter types and checks that the columns it returns are exactly the
result type's fields, so the SQL and its decoder cannot drift apart.

Rows decode **by column name**: the row factory reads the result's column names once
per execution, maps them onto the result type's fields, whatever order the SQL
returns them in, and builds each row with one positional call — as cheap as decoding
by position, without depending on it. ``load`` converts a column on the way (bytea to
``bytes``, an array to a tuple) where the result type wants another Python type.

A statement is run through :mod:`._db.runner`, bound to a schema with :meth:`bind`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic

from psycopg.rows import RowMaker
from typing_extensions import TypeVar

from .schema import quote_ident

# A bare `Stmt` means `Stmt[Any]`: code that does not care what a statement returns
# need not say so.
R = TypeVar("R", default=Any)

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def channel_of(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's engines (an identifier of at most 63
    bytes: a long schema name is replaced by its digest)."""
    channel = f"gen_durable.{schema}"
    if len(channel.encode()) > 63:
        channel = "gen_durable." + hashlib.sha1(schema.encode()).hexdigest()
    return channel


@dataclass(frozen=True, eq=False)
class Statement(Generic[R]):
    """One SQL statement: what it is for, what it takes and what it returns."""

    name: str
    why: str
    sql: str
    params: Mapping[str, str] = field(default_factory=dict)
    """Parameter name → PostgreSQL type, as the every-statement test prepares it."""
    result: type[R] | None = None
    """The dataclass a row decodes into (fields = column names); None: rows unused."""
    load: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    """Column name → conversion applied to that column's value while decoding."""
    _texts: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)
    _makers: dict[tuple[bytes, ...], RowMaker[R]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        used = set(_PLACEHOLDER.findall(self.sql))
        if used != set(self.params):
            raise TypeError(
                f"statement {self.name}: placeholders {sorted(used)} but declared "
                f"parameters {sorted(self.params)}"
            )
        if self.result is not None and not dataclasses.is_dataclass(self.result):
            raise TypeError(f"statement {self.name}: result must be a dataclass")
        unknown = set(self.load) - set(self.columns)
        if unknown:
            raise TypeError(f"statement {self.name}: load names no column {sorted(unknown)}")
        REGISTRY.add(self)

    @property
    def columns(self) -> tuple[str, ...]:
        """The result columns, by name, in the result type's field order."""
        if self.result is None:
            return ()
        return tuple(f.name for f in dataclasses.fields(self.result))  # type: ignore[arg-type]

    def text(self, schema: str) -> bytes:
        """The statement rendered for ``schema`` (cached: rendered once per schema)."""
        found = self._texts.get(schema)
        if found is None:
            found = self.render(schema).encode()
            self._texts[schema] = found
        return found

    def render(self, schema: str) -> str:
        text = self.sql.replace("{s}", quote_ident(schema))
        if "{channel}" in text:
            text = text.replace("{channel}", quote_ident(channel_of(schema)))
        return text

    def bind(self, schema: str, params: dict[str, Any] | None = None) -> Stmt[R]:
        """This statement for ``schema`` with its parameter values, ready to run."""
        return Stmt(self, self.text(schema), {} if params is None else params)

    def row_factory(self, cursor: Any) -> RowMaker[R]:
        """psycopg row factory: rows of this statement as its result type, by name."""
        res = cursor.pgresult
        if res is None or not res.nfields or self.result is None:
            return _no_row
        key = tuple(res.fname(i) for i in range(res.nfields))
        maker = self._makers.get(key)
        if maker is None:
            maker = self._makers[key] = self._maker([n.decode() for n in key])
        return maker

    def _maker(self, names: Sequence[str]) -> RowMaker[R]:
        cls = self.result
        assert cls is not None
        fields = self.columns
        if sorted(names) != sorted(fields):
            raise TypeError(
                f"statement {self.name} returned columns {list(names)}; "
                f"{cls.__name__} has fields {list(fields)}"
            )
        if tuple(names) == fields and not self.load:
            return lambda values: cls(*values)
        picks = [(names.index(f), self.load.get(f)) for f in fields]

        def make(values: Sequence[Any]) -> R:
            return cls(*[v if (v := values[i]) is None or f is None else f(v) for i, f in picks])

        return make


def _no_row(values: Sequence[Any]) -> Any:
    raise TypeError("this statement declares no result columns")


@dataclass(frozen=True, slots=True)
class Stmt(Generic[R]):
    """One statement bound to a schema and its parameters: what the runner runs."""

    statement: Statement[R]
    query: bytes
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return self.statement.name


class Registry:
    """Every declared statement, by name (the every-statement test iterates it)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Statement[Any]] = {}

    def add(self, statement: Statement[Any]) -> None:
        if statement.name in self._by_name:
            raise TypeError(f"two statements are named {statement.name!r}")
        self._by_name[statement.name] = statement

    def __getitem__(self, name: str) -> Statement[Any]:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Statement[Any]]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)


REGISTRY = Registry()
"""Every statement of the package, once :mod:`._db.statements` is imported."""


@dataclass(frozen=True, eq=False)
class CopyIn:
    """One binary ``COPY … FROM STDIN`` into a table: its columns with the PostgreSQL
    type each value is sent as (``psycopg``'s ``set_types``). Not a :class:`Statement`:
    a COPY cannot be prepared, and it returns nothing but its row count."""

    name: str
    why: str
    table: str
    """The table, with ``{s}`` for the quoted schema."""
    columns: tuple[tuple[str, str], ...]

    @property
    def types(self) -> list[str]:
        return [t for _, t in self.columns]

    def text(self, schema: str) -> str:
        names = ", ".join(n for n, _ in self.columns)
        table = self.table.replace("{s}", quote_ident(schema))
        return f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
