"""Where a row's ``(fsm, fsm_version)`` finds its class (SPEC §13).

Resolution order: the engine's explicit ``fsms=``, then the classes registered when
they were created, then — for default names, which are dotted import paths — an
import of the module, accepted only if what it yields is a machine whose own name and
version match the row. Nothing else found by name is ever executed.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import InvalidMachine

if TYPE_CHECKING:  # machine.py registers its classes here: no import back at run time
    from .machine import Machine

log = logging.getLogger("gen_durable")


class Registry:
    """A map of ``(name, version)`` to machine class."""

    def __init__(self, machines: Iterable[type[Machine]] = ()) -> None:
        self._by_key: dict[tuple[str, int], type[Machine]] = {}
        self._lock = threading.Lock()
        for m in machines:
            self.add(m)

    def add(self, machine: type[Machine]) -> None:
        if not (isinstance(machine, type) and hasattr(machine, "__gd_abstract__")):
            raise InvalidMachine(f"{machine!r} is not a gd.FSM or gd.Job subclass")
        if machine.__gd_abstract__:
            raise InvalidMachine(f"{machine.__qualname__} is abstract and cannot run")
        with self._lock:
            self._by_key[(machine.__gd_name__, machine.__gd_version__)] = machine

    def get(self, name: str, version: int) -> type[Machine] | None:
        return self._by_key.get((name, version))

    def __iter__(self) -> Iterator[type[Machine]]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)


REGISTRY = Registry()
"""Every concrete machine, added when its class statement runs."""


def resolve(explicit: Registry, name: str, version: int) -> type[Machine] | None:
    """Find the class for a row, or None (the caller hands the row back)."""
    found = explicit.get(name, version) or REGISTRY.get(name, version)
    if found is not None:
        return found
    return _import_fallback(name, version)


def is_machine(obj: object) -> bool:
    """A concrete machine class (every class deriving from gd.FSM/gd.Job carries the
    ``__gd_*`` attributes its base sets)."""
    return isinstance(obj, type) and getattr(obj, "__gd_abstract__", True) is False


def attribute_path(obj: object, attrs: Iterable[str]) -> object | None:
    """``obj.a.b.c`` for ``attrs`` ``["a", "b", "c"]``, or None where one is missing."""
    for attr in attrs:
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def find_dotted(path: str) -> object | None:
    """What a dotted path names: the longest importable module prefix of ``path``,
    then attributes for the rest (``pkg.module.Class.Inner``). None when no prefix
    imports; an error raised while importing an existing module propagates."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            module: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return attribute_path(module, parts[cut:])
    return None


def _import_fallback(name: str, version: int) -> type[Machine] | None:
    try:
        obj = find_dotted(name)
    except Exception:  # a module that fails to import is a miss, not a crash
        log.exception("importing a module to resolve machine %s failed", name)
        return None
    if is_machine(obj):
        found: Any = obj
        if found.__gd_name__ == name and found.__gd_version__ == version:
            machine: type[Machine] = found
            return machine
    # Importing registers the module's machines: an old version may be there.
    return REGISTRY.get(name, version)
