"""The documentation is executed, so it cannot rot.

Every ```python block of the README and of each guide in ``docs/`` runs, in the order
it appears, in one namespace per file — exactly what a reader gets by pasting a page's
blocks into one script. The namespace's ``__name__`` is ``"__main__"`` and the page's
engines find their database the way a user's would: through ``GEN_DURABLE_DSN``,
pointed here at a brand-new, empty database per page (the pages migrate it themselves),
so a page can neither see nor disturb another page's rows.

Blocks that are deliberately not runnable (a Django settings fragment, an Alembic
migration) carry the info string ``python no-run``; they must still compile. Any other
info string on a Python-looking fence is refused, so a typo cannot silently turn a
runnable example into an unchecked one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import gen_durable as gd

ROOT = Path(__file__).resolve().parent.parent
GUIDES = (
    "machines",
    "jobs",
    "signals",
    "effects",
    "children",
    "uniqueness",
    "partitioning",
    "scheduling",
    "production",
    "operations",
    "telemetry",
    "testing",
    "observability",
)
PAGES = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in GUIDES)]

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    info: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 2  # first line of the code itself
        found.append(Block(path, line, m.group(1).strip(), m.group(2)))
    return found


def python_blocks(path: Path, info: str) -> list[Block]:
    return [b for b in blocks(path) if b.info == info]


@pytest.fixture
def fresh_database(dsn: str) -> Iterator[str]:
    """An empty database of its own, dropped afterwards; yields its DSN."""
    name = "gd_docs_" + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as conn:
        # template0: nobody is ever connected to it, so the copy cannot be refused.
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run_page(path: Path) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "__main__"}
    runnable = python_blocks(path, "python")
    assert runnable, f"{path.relative_to(ROOT)} has no runnable ```python block"
    for block in runnable:
        # Pad with newlines so a traceback points at the line in the Markdown file.
        source = "\n" * (block.line - 1) + block.code
        code = compile(source, str(block.path), "exec")
        try:
            exec(code, namespace)
        except BaseException as exc:
            raise AssertionError(f"the example at {block.where} failed: {exc!r}") from exc
    return namespace


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs(page: Path, fresh_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEN_DURABLE_DSN", fresh_database)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    run_page(page)
    # The page left nothing running: every instance it created reached an end
    # state or was deliberately left waiting (a page never leaves work executing).
    with psycopg.connect(fresh_database) as conn:
        executing = conn.execute(
            "SELECT count(*) FROM public.gen_durable WHERE status = 'executing'"
        ).fetchone()
    assert executing == (0,), f"{page.name} left instances executing"


def test_pages_migrate_their_own_database(dsn: str) -> None:
    # A page runs against an empty database, so the first runnable block of every
    # page must create the schema itself (a reader copying the page gets a
    # working script, not one that relies on a harness).
    for page in PAGES:
        first = python_blocks(page, "python")[0].code
        assert "gd.migrate" in first, f"{page.name}: the first block should migrate"


def test_no_run_blocks_compile() -> None:
    checked = 0
    for page in [*PAGES, ROOT / "docs" / "index.md"]:
        for block in python_blocks(page, "python no-run"):
            compile(block.code, block.where, "exec")  # syntax and scoping, not just parsing
            checked += 1
    assert checked >= 2, "the production guide shows Django and Alembic fragments"


def test_only_known_fence_kinds() -> None:
    allowed = {"python", "python no-run", "sh", "text", "sql", "toml", "ini", ""}
    for page in [*PAGES, ROOT / "docs" / "index.md"]:
        for block in blocks(page):
            assert block.info in allowed, f"{block.where}: unknown fence {block.info!r}"
            if block.info in ("", "text"):
                assert not block.code.lstrip().startswith(("import ", "from ", "async def")), (
                    f"{block.where}: Python code in an untyped fence is never checked"
                )


# Written by the benchmark scripts (`make bench`, `make explain`), not by hand: until a
# run has produced them, the README's links to them are the only ones allowed to point
# at a missing file.
GENERATED = {ROOT / "docs" / "performance.md", ROOT / "docs" / "explain.md"}


def test_relative_links_resolve() -> None:
    for page in [*PAGES, ROOT / "docs" / "index.md"]:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            file = (page.parent / target.split("#", 1)[0]).resolve()
            assert file.exists() or file in GENERATED, f"{page.name}: broken link {target}"


def test_every_guide_is_listed() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in GUIDES:
        assert f"({name}.md)" in index, f"docs/index.md does not link {name}.md"
        assert f"(docs/{name}.md)" in readme, f"README.md does not link docs/{name}.md"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks(ROOT / "README.md")[0]
    commands = [ln.split("#")[0].strip() for ln in first.code.splitlines() if ln.strip()]
    assert commands == ["make demo", "make test"]
    assert readme.index("```") < readme.index("\n## "), "the commands come before any section"
    assert "\n## Command line\n" in readme
    assert "(docs/performance.md)" in readme


def test_configuration_reference_covers_every_engine_option() -> None:
    # The reference table names every option the engine accepts, with its default.
    import dataclasses

    from gen_durable._runtime.config import Config

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    for f in dataclasses.fields(Config):
        assert f"`{f.name}`" in section, f"option {f.name} missing from the reference"
    for option in sorted(gd.client.INSERT_OPTIONS):
        assert f"`{option}`" in section, f"insert option {option} missing"
    for var in ("GEN_DURABLE_DSN", "DATABASE_URL"):
        assert var in section


def test_telemetry_guide_lists_every_event() -> None:
    guide = (ROOT / "docs" / "telemetry.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in guide.splitlines()
        if line.startswith("| `")
    }
    assert rows >= set(gd.telemetry.EVENTS), sorted(set(gd.telemetry.EVENTS) - rows)


def test_readme_lists_the_six_outcomes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for outcome in ("Next", "Replay", "Await", "ScheduleChilds", "Done", "Stop"):
        assert f"| `gd.{outcome}(" in readme, outcome
