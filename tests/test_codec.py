"""The JSON/text codec at the database boundary (SPEC §15, §18.3).

Pure checks first; then the values that pass are stored and read back through the
real insert statement, and the ones refused are shown to be ones PostgreSQL itself
would reject.
"""

from __future__ import annotations

import json
import math

import psycopg
import pytest
from pydantic import BaseModel

import gen_durable as gd
from gen_durable._db import codec
from gen_durable._db.queries import Queries

from .sqlhelp import fetch, insert, scalar


class Model(BaseModel):
    name: str
    score: float = 0.0


@pytest.mark.parametrize(
    "value",
    [
        {"s": "a\x00b"},
        ["ok", {"deep": ["\x00"]}],
        "\x00",
        {"key\x00": 1},
        Model(name="nul\x00"),
    ],
)
def test_nul_characters_are_refused(value) -> None:
    with pytest.raises(gd.EncodingError, match="NUL"):
        codec.dumps(value, "state")


@pytest.mark.parametrize("value", [math.nan, {"x": math.inf}, [-math.inf]])
def test_nan_and_infinity_are_refused(value) -> None:
    with pytest.raises(gd.EncodingError):
        codec.dumps(value, "result")


def test_model_with_nan_is_stored_as_null_never_as_a_bare_nan_token() -> None:
    text = codec.dumps(Model(name="x", score=math.nan))
    assert "NaN" not in text
    assert json.loads(text) == {"name": "x", "score": None}


def test_nan_and_infinity_inside_strings_are_plain_text() -> None:
    value = {"s": "NaN", "t": "-Infinity and beyond", "NaN": 1}
    assert json.loads(codec.dumps(value)) == value


@pytest.mark.parametrize("value", [{1, 2}, object(), {"x": b"bytes"}])
def test_values_that_are_not_json_are_refused(value) -> None:
    with pytest.raises(gd.EncodingError, match="cannot be encoded"):
        codec.dumps(value)


def test_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    # The six characters \u0000 in a string (a backslash, then "u0000") are fine.
    text = codec.dumps({"path": "C:\\u0000dir"})
    assert json.loads(text) == {"path": "C:\\u0000dir"}
    # ... but an even run of backslashes followed by a real NUL is still a NUL.
    with pytest.raises(gd.EncodingError):
        codec.dumps({"path": "\\\\\x00"})


def test_unicode_is_kept_verbatim_not_escaped() -> None:
    value = {"name": "Zoë", "emoji": "🚀", "cjk": "漢字", "rtl": "שלום"}
    text = codec.dumps(value)
    assert "Zoë" in text and "🚀" in text  # ensure_ascii=False
    assert json.loads(text) == value
    assert codec.dumps(Model(name="ß")) == '{"name":"ß","score":0.0}'


def test_check_text_and_key_bytes() -> None:
    assert codec.check_text("queue-ü", "queue") == "queue-ü"
    with pytest.raises(gd.EncodingError, match="NUL"):
        codec.check_text("a\x00", "queue")
    with pytest.raises(gd.EncodingError):
        codec.check_text(5, "queue")  # type: ignore[arg-type]
    assert codec.key_bytes("é") == b"\xc3\xa9"
    assert codec.key_bytes(b"\x00raw") == b"\x00raw"
    assert codec.key_bytes(bytearray(b"ab")) == b"ab"
    assert codec.key_bytes(memoryview(b"cd")) == b"cd"
    assert codec.key_bytes(None) is None
    with pytest.raises(gd.EncodingError):
        codec.key_bytes(12)  # type: ignore[arg-type]
    assert codec.loads(None) is None and codec.loads('{"a":1}') == {"a": 1}


async def test_accepted_values_round_trip_through_postgres(conn, schema) -> None:
    q = Queries(schema)
    value = {
        "name": "Zoë 🚀 漢字",
        "path": "C:\\u0000dir",
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
        "big": 2**53 + 1,
    }
    (iid,) = await insert(conn, q, {"state": codec.dumps(value)})
    row = await fetch(conn, schema, iid)
    assert row["state"] == value
    assert await scalar(conn, f"SELECT state->>'name' FROM \"{schema}\".gen_durable") == (
        "Zoë 🚀 漢字"
    )


async def test_what_the_codec_refuses_postgres_would_refuse_too(conn) -> None:
    """The codec is not stricter than needed: these are exactly jsonb's limits."""
    with pytest.raises(psycopg.errors.UntranslatableCharacter):
        await conn.execute("SELECT %s::jsonb", ('{"s": "a\\u0000b"}',))
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        await conn.execute("SELECT %s::jsonb", ('{"x": NaN}',))
