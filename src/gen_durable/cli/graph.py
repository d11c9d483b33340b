"""``gen-durable graph MODULE:Machine``: a machine's steps and transitions as Mermaid
(SPEC §26). No database: the module is imported and its source read, the same
reading that checks step references when the class is created (:mod:`..graph`)."""

from __future__ import annotations

import argparse

from ..graph import mermaid
from .common import CommandError, import_apps, resolve_machine


def cmd_graph(args: argparse.Namespace) -> int:
    import_apps(args.path, args.app)
    machine = resolve_machine(args.machine)
    if machine.__gd_steps__ is None:
        raise CommandError(
            f"{machine.__gd_name__} is a step(self, step, ctx) dispatcher or a gd.Job: "
            "graph draws machines written with @gd.step methods"
        )
    print(mermaid(machine), end="")
    return 0
