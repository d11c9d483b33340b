"""The statement declarations: every one against real PostgreSQL, and SQL in one place.

Each registered statement is PREPAREd with its declared parameter types in a schema
of an awkward name (so an unqualified table name or a badly quoted schema fails), and
the columns PostgreSQL says it returns must be exactly its result type's fields —
the decoder maps rows by those names. Utility statements, which PREPARE does not
take, run inside a rolled-back transaction instead. No SQL text may hide outside
``gen_durable/_db``.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gen_durable as gd
from gen_durable._db import statements
from gen_durable._db.batch import Layout
from gen_durable._db.statement import _PLACEHOLDER, REGISTRY, Statement
from gen_durable._db.statements.inserts import NEW_ROW
from gen_durable._db.statements.leases import CLAIM
from gen_durable._db.statements.outcomes import OUTCOME
from gen_durable._db.statements.reads import GET

PACKAGE = Path(gd.__file__).resolve().parent
PREPARABLE = re.compile(r"^\s*(WITH|SELECT|INSERT|UPDATE|DELETE)\b")


def _positional(statement: Statement[Any], schema: str) -> tuple[str, list[str]]:
    """The statement's text with ``$n`` for each named parameter, and their types."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = _PLACEHOLDER.sub(number, statement.render(schema)).replace("%%", "%")
    return text, [statement.params[n] for n in names]


@pytest.fixture
def odd_schema(dsn: str) -> Any:
    name = f'Odd "Name" {uuid.uuid4().hex[:6]} ß'
    gd.migrate_sync(dsn, schema=name)
    yield name
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_the_registry_holds_every_statement_of_every_module() -> None:
    declared = [
        value
        for module in (getattr(statements, m) for m in statements.__all__)
        for value in vars(module).values()
        if isinstance(value, Statement)
    ]
    assert {s.name for s in declared} == {s.name for s in REGISTRY}
    assert len(REGISTRY) >= 26
    for statement in REGISTRY:
        assert statement.why and "\n" not in statement.why, statement.name
        assert set(_PLACEHOLDER.findall(statement.sql)) == set(statement.params)


def test_every_statement_prepares_and_returns_its_declared_columns(dsn, odd_schema) -> None:
    empty_path = psycopg.conninfo.make_conninfo(dsn, options="-c search_path=")
    with psycopg.connect(empty_path, autocommit=True) as conn:
        for i, statement in enumerate(REGISTRY):
            text, types = _positional(statement, odd_schema)
            if not PREPARABLE.match(text):
                with conn.transaction(force_rollback=True):
                    conn.execute(text.encode())
                continue
            name = f"gd_check_{i}".encode()
            oids = [_oid(conn, t) for t in types]
            res = conn.pgconn.prepare(name, text.encode(), oids)
            assert res.status == psycopg.pq.ExecStatus.COMMAND_OK, (
                statement.name,
                res.error_message.decode(),
            )
            described = conn.pgconn.describe_prepared(name)
            columns = [described.fname(c).decode() for c in range(described.nfields)]
            if statement.result is not None:
                assert sorted(columns) == sorted(statement.columns), statement.name
            conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name.decode())))


def _oid(conn: psycopg.Connection[Any], pgtype: str) -> int:
    row = conn.execute("SELECT %s::regtype::oid", (pgtype,)).fetchone()
    assert row is not None
    return int(row[0])


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_no_sql_outside_the_db_package() -> None:
    keyword = re.compile(r"SELECT |UPDATE |INSERT INTO|DELETE FROM")
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text[:60]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "_db"
        for line, text in _string_literals(path)
        if keyword.search(text)
    ]
    assert found == []
    # The check sees SQL where it is: the statement modules are full of it.
    assert any(keyword.search(t) for _, t in _string_literals(PACKAGE / "_db/statements/pick.py"))


def test_rows_decode_by_column_name_whatever_their_order() -> None:
    columns = GET.columns
    values = {c: f"v-{c}" for c in columns}
    values.update(unique_key=memoryview(b"k"), unique_guard=None, unique_scope=["a"], errors=[])
    in_order = GET._maker(list(columns))([values[c] for c in columns])
    shuffled = list(reversed(columns))
    out_of_order = GET._maker(shuffled)([values[c] for c in shuffled])
    assert in_order == out_of_order
    assert out_of_order.unique_key == b"k" and out_of_order.unique_scope == ("a",)
    assert out_of_order.id == "v-id" and out_of_order.errors == ()
    with pytest.raises(TypeError, match="returned columns"):
        GET._maker([*columns[:-1], "surprise"])


def test_a_declaration_must_match_its_sql() -> None:
    with pytest.raises(TypeError, match="placeholders"):
        Statement("test.bad", "a test", "SELECT %(a)s", {"b": "int8"})
    with pytest.raises(TypeError, match="two statements"):
        Statement("get", "a test", "SELECT 1")


_SAMPLES: dict[str, Any] = {
    "id": 7,
    "token": 'n:1 "q" ü',
    "kind": "next",
    "step": "b\\c",
    "state": '{"a": [1, {"b": null}]}',
    "result": "[1, 2]",
    "error": "E\n1",
    "delay": 1.5,
    "awaits": None,
    "consume": ["go", 'st"op'],
    "seen": (3, 4),
    "keep": True,
    "timeout": 2.5,
    "deadline": dt.datetime(2031, 5, 6, 7, 8, 9, 10, tzinfo=dt.UTC),
    "error_entry": '{"type": "E"}',
    "fsm": "m.M",
    "fsm_version": 2,
    "queue": "q",
    "priority": -3,
    "partition_key": None,
    "partition_limit": 3,
    "rate_limit": "api:tenant-1",
    "eligible_at": dt.datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
    "unique_key": b"\x00\xffkey",
    "unique_scope": "{runnable,executing}",
    "parent_id": 11,
}


_DECODED: dict[str, Any] = {"state": json.loads, "result": json.loads, "seen": list}


@pytest.mark.parametrize("layout", [OUTCOME, NEW_ROW, CLAIM], ids=lambda layout: layout.name)
@pytest.mark.parametrize("entry", ['{"type": "E"}', None])
async def test_each_layout_writes_what_its_sql_reads(conn, layout: Layout, entry) -> None:
    """One declaration gives the encoders and the unpack: a row written by each
    encoder and read back by the unpack is the row that went in."""
    row = {name: _SAMPLES[name] for name in layout.names}
    if "error_entry" in row:
        row["error_entry"] = entry
    text = layout.row(SimpleNamespace(**row))
    assert text == layout.element(**row)
    assert layout.columns(*([row[n]] for n in layout.names)) == f"[{text}]"
    query = f"SELECT {layout.unpack()} FROM jsonb_array_elements(%s::jsonb) e"
    cur = await conn.execute(query.encode(), (f"[{text}]",))
    assert cur.description is not None
    got = dict(zip([c.name for c in cur.description], await cur.fetchone(), strict=True))
    decoders = {**_DECODED, "error_entry": lambda v: None if v is None else json.loads(v)}
    assert got == {n: decoders.get(n, lambda v: v)(v) for n, v in row.items()}
