"""What a machine's source says about its transitions: the class-creation check of
step methods and ``gen-durable graph`` read it the same way (SPEC §26).

For a ``step(self, step, ctx)`` dispatcher the same outcomes are read inside its
``if step == "x":`` and ``match step: case "x":`` branches, which name the step they
leave. The reading is static and partial by design — a machine is ordinary Python, and an
outcome built from a variable cannot be followed without running it. It sees the
outcomes written out in a step method's body: ``Next(Order.ship, …)`` and
``ScheduleChilds(Order.joined, …)`` (a method of the machine, by reference, or a step
name as a string literal), ``Await("paid", …)`` (the step runs again when woken),
``Done``/``Stop`` (the end). Without source (a class built in a REPL or by ``exec``)
nothing is read and nothing is refused; the run-time check of each outcome
(``InvalidOutcome``) still holds.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidMachine

if TYPE_CHECKING:
    from .machine import Machine

# The outcome constructors the reading recognises, by the name a call spells
# (`gd.Next(...)` or a bare `Next(...)` imported from gen_durable).
_KINDS = {
    "Next": "next",
    "ScheduleChilds": "children",
    "Await": "await",
    "Done": "done",
    "Stop": "stop",
}
_LABELS = {"next": "Next", "children": "ScheduleChilds", "done": "Done", "stop": "Stop"}


@dataclass(frozen=True, slots=True)
class Transition:
    """One outcome found in a step's source. ``target`` is None for the end
    (``Done``/``Stop``) and the step itself for ``Await``; ``by_ref`` says the target
    was written as ``<Class>.<method>``; ``label`` is the awaited signal, if literal."""

    source: str
    kind: str
    target: str | None
    by_ref: bool = False
    label: str | None = None


def _callee(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _first(node: ast.Call, keyword: str) -> ast.expr | None:
    if node.args:
        return node.args[0]
    return next((k.value for k in node.keywords if k.arg == keyword), None)


def _read_call(node: ast.Call, owner: str, source: str) -> Transition | None:
    kind = _KINDS.get(_callee(node) or "")
    if kind is None:
        return None
    if kind in ("done", "stop"):
        return Transition(source, kind, None)
    if kind == "await":
        arg = _first(node, "signal")
        label = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        return Transition(source, kind, source, label=label)
    arg = _first(node, "step")
    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == owner:
        return Transition(source, kind, arg.attr, by_ref=True)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return Transition(source, kind, arg.value)
    return None  # a computed target: not knowable without running the step


def _source_tree(fn: Any) -> ast.AST | None:
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    try:
        return ast.parse(textwrap.dedent(text))
    except SyntaxError:  # a lambda or decorated fragment inspect cut badly
        return None


def _calls(node: ast.AST) -> list[ast.Call]:
    found = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def transitions(machine: type[Machine]) -> list[Transition]:
    """The transitions written out in the machine's step methods — or, for a
    ``step(self, step, ctx)`` dispatcher, in its ``if step == "x"`` and
    ``match step: case "x"`` branches — in source order."""
    found: list[Transition] = []
    steps = getattr(machine, "__gd_steps__", None)
    if steps is None:
        tree = _source_tree(getattr(machine, "step", None))
        if tree is not None:
            _dispatcher(tree, machine.__name__, found)
        return found
    for name in steps:
        tree = _source_tree(getattr(machine, name))
        for node in _calls(tree) if tree is not None else ():
            t = _read_call(node, machine.__name__, name)
            if t is not None and t not in found:
                found.append(t)
    return found


def _compared_step(test: ast.expr, param: str) -> str | None:
    """``"x"`` for a test ``step == "x"`` (either way round), else None."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    if not isinstance(test.ops[0], ast.Eq):
        return None
    pair = (test.left, test.comparators[0])
    for name, value in (pair, pair[::-1]):
        if isinstance(name, ast.Name) and name.id == param and isinstance(value, ast.Constant):
            return value.value if isinstance(value.value, str) else None
    return None


def _case_steps(pattern: ast.pattern) -> list[str]:
    if isinstance(pattern, ast.MatchValue) and isinstance(pattern.value, ast.Constant):
        return [pattern.value.value] if isinstance(pattern.value.value, str) else []
    if isinstance(pattern, ast.MatchOr):
        return [name for p in pattern.patterns for name in _case_steps(p)]
    return []


def _dispatcher(tree: ast.AST, owner: str, found: list[Transition]) -> None:
    defs = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    func = next(defs, None)
    if func is None:
        return
    params = func.args.posonlyargs + func.args.args
    param = params[1].arg if len(params) > 1 else "step"

    def visit(nodes: list[ast.stmt], source: str | None) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                visit(node.body, _compared_step(node.test, param) or source)
                visit(node.orelse, source)
            elif isinstance(node, ast.Match) and (
                isinstance(node.subject, ast.Name) and node.subject.id == param
            ):
                for case in node.cases:
                    names: list[str | None] = [*_case_steps(case.pattern)] or [source]
                    for name in names:
                        visit(case.body, name)
            elif source is not None:
                for call in _calls(node):
                    t = _read_call(call, owner, source)
                    if t is not None and t not in found:
                        found.append(t)

    visit(func.body, None)


def check_references(machine: type[Machine], steps: dict[str, bool]) -> None:
    """Refuse a step method whose source sends to ``<ThisClass>.<x>`` when ``x`` is not
    a step method (class creation, SPEC §26)."""
    for t in transitions(machine):
        if t.by_ref and t.target not in steps:
            raise InvalidMachine(
                f"{machine.__qualname__}.{t.source} returns {t.kind} to "
                f"{machine.__name__}.{t.target}, which is not a @gd.step method of "
                f"{machine.__qualname__} (its steps: {', '.join(sorted(steps))})"
            )


def mermaid(machine: type[Machine]) -> str:
    """The machine as a Mermaid state diagram: its steps, the entry at ``initial``
    and the transitions :func:`transitions` can see."""
    found = transitions(machine)
    steps = list(getattr(machine, "__gd_steps__", None) or ())
    for t in found:  # a dispatcher's steps are the ones its branches and outcomes name
        steps += [x for x in (t.source, t.target) if x is not None and x not in steps]
    lines = ["stateDiagram-v2", f"    [*] --> {machine.__gd_initial__}"]
    lines += [f"    {s}" for s in steps if s != machine.__gd_initial__]
    for t in found:
        target = "[*]" if t.target is None else t.target
        text = f"Await {t.label}" if t.kind == "await" and t.label else _LABELS.get(t.kind, "Await")
        lines.append(f"    {t.source} --> {target}: {text}")
    return "\n".join(lines) + "\n"


__all__ = ["Transition", "check_references", "mermaid", "transitions"]
