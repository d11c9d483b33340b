"""The types users see: snippets in ``tests/typing/`` and the examples under
``mypy --strict`` (SPEC §26; see tests/typing/README.md for the marker rules)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gen_durable._inputs import INSERT_OPTIONS, InsertOptions

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tests" / "typing"
_MARK = re.compile(r"#\s*E:\s*(.+?)\s*$")
_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")


def _mypy(*targets: Path) -> tuple[int, list[tuple[str, int, str]]]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *map(str, targets)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = []
    for line in proc.stdout.splitlines():
        m = _ERROR.match(line)
        if m:
            name = Path(m["path"]).name
            errors.append((name, int(m["line"]), m["message"]))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    return proc.returncode, errors


def _expected() -> dict[tuple[str, int], str]:
    marks = {}
    for path in sorted(SNIPPETS.glob("*.py")):
        for n, text in enumerate(path.read_text().splitlines(), start=1):
            m = _MARK.search(text)
            if m:
                assert path.name.startswith("fail_"), f"{path.name}:{n}: a marker in a pass file"
                marks[(path.name, n)] = m.group(1)
    return marks


def test_typing_snippets_pass_and_fail_as_marked() -> None:
    files = sorted(SNIPPETS.glob("*.py"))
    assert {p.name for p in files} >= {
        "pass_machines.py",
        "fail_state.py",
        "fail_outcome.py",
        "fail_option.py",
    }
    _, errors = _mypy(*files)
    expected = _expected()
    found = {(name, line): message for name, line, message in errors}
    unexpected = {k: v for k, v in found.items() if k not in expected}
    assert not unexpected, f"errors on lines without a marker: {unexpected}"
    for where, text in expected.items():
        assert where in found, f"{where[0]}:{where[1]}: expected an error containing {text!r}"
        assert text in found[where], f"{where[0]}:{where[1]}: {found[where]!r} lacks {text!r}"
    # Every failing snippet fails for its own reasons, not for one shared mistake.
    assert {name for name, _ in expected} == {p.name for p in files if p.name.startswith("fail_")}


def test_examples_are_clean_under_mypy_strict() -> None:
    code, errors = _mypy(ROOT / "examples")
    assert code == 0 and not errors, errors
    ignores = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in (ROOT / "examples").rglob("*.py")
        for n, text in enumerate(p.read_text().splitlines(), start=1)
        if "type: ignore" in text
    ]
    assert not ignores, f"examples must type-check without ignores: {ignores}"


def test_the_typed_insert_options_match_the_run_time_ones() -> None:
    assert set(InsertOptions.__annotations__) == set(INSERT_OPTIONS)
