"""The package's shape: no import cycle between its modules, small modules, short
functions in the runtime and SQL layers."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "gen_durable"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions allowed past the bound, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (functions included), but
    for imports only a type checker sees."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if mod.startswith("gen_durable"):
                found.add(mod)
                for alias in node.names:  # `from . import telemetry` names a module
                    if (
                        (PKG.parent / (mod + "." + alias.name).replace(".", "/"))
                        .with_suffix(".py")
                        .exists()
                    ):
                        found.add(mod + "." + alias.name)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gen_durable"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for dep in _imports(path):
            # A package import runs its __init__: count the package itself, not its parents.
            while dep not in modules and "." in dep:
                dep = dep.rpartition(".")[0]
            if dep in modules and dep != name:
                deps.add(dep)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # Importing a package's own __init__ from inside it is how packages work.
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := walk(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_no_import_cycle_inside_the_package() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_modules_are_small() -> None:
    big = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_runtime_and_sql_functions_are_short() -> None:
    long: dict[str, int] = {}
    for sub in ("_runtime", "_db"):
        for path in (PKG / sub).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    n = node.end_lineno - node.lineno + 1
                    key = f"{sub}/{path.name}:{node.name}"
                    if n > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                        long[key] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
