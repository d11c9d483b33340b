"""Engine options are declared once (``Config``); the places that show them agree."""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Mapping
from pathlib import Path

import pytest

import gen_durable as gd
from gen_durable._runtime.config import Config, cli_options, kind_of, options
from gen_durable.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_engine_keywords_are_exactly_the_declared_options() -> None:
    params = inspect.signature(gd.Engine.__init__).parameters
    hints = typing.get_type_hints(gd.Engine.__init__)
    declared = {f.name: f for f in options()}
    assert set(params) - {"self", "dsn", "queues", "fsms", "schedules"} == set(declared)
    for name, f in declared.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == f.default, name
        assert hints[name] == typing.get_type_hints(Config)[name], name


def test_readme_configuration_table_lists_every_option_with_its_default() -> None:
    text = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, flags=re.M))
    for f in options():
        assert f.name in rows, f"README configuration table lacks {f.name}"
        shown = rows[f.name]
        default = f.default
        if isinstance(default, Mapping):  # shown as the JSON object it equals
            assert json.loads(shown) == dict(default), (f.name, shown)
            continue
        expected = (
            repr(default) if isinstance(default, str | bool) or default is None else f"{default:g}"
        )
        assert shown.strip('"') == expected.strip("'"), (f.name, shown, expected)


def test_worker_flags_derive_from_the_declaration() -> None:
    parser = build_parser()
    worker = next(
        a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "worker"
    )[1]
    flags = {a.dest: a for a in worker._actions}
    for f in cli_options():
        assert f.name in flags, f.name
        assert flags[f.name].type is kind_of(f)
        assert f.metadata["help"] in flags[f.name].help
    assert {f.name for f in cli_options()} >= {
        "lease_ttl", "heartbeat_interval", "poll_interval", "max_poll_interval",
        "reap_interval", "prefetch", "min_demand", "drain_timeout",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("lease_ttl", 0, "lease_ttl must be > 0"),
        ("drain_timeout", -1, "drain_timeout must be >= 0"),
        ("prefetch", -1, "prefetch must be an int >= 0"),
        ("pool_size", 1, "pool_size must be an int >= 2"),
        ("listen", "yes", "listen must be a bool"),
        ("node_id", "", "node_id must be a non-empty str"),
        ("poll_interval", float("nan"), "poll_interval must be a number"),
        ("reap_interval", float("inf"), "reap_interval must be > 0 and finite"),
    ],
)
def test_bad_values_are_refused_by_the_declaration(option: str, value: object, needle: str) -> None:
    with pytest.raises(gd.ConfigurationError, match=re.escape(needle)):
        gd.Engine("postgresql://localhost/x", **{option: value})  # type: ignore[arg-type]


def test_build_config_refuses_unknown_names_with_the_known_ones() -> None:
    from gen_durable._runtime.config import build_config

    with pytest.raises(gd.ConfigurationError, match=r"options are .*lease_ttl"):
        build_config("postgresql://localhost/x", None, leese_ttl=3)
