"""``gen-durable graph MODULE:Machine``: a machine's steps and transitions as Mermaid
(SPEC §26). No database: the module is imported and its source read, the same
reading that checks step references when the class is created (:mod:`..graph`)."""

from __future__ import annotations

import argparse

from ..graph import mermaid
from ..machine import Job
from .common import CommandError, import_apps, resolve_machine


def cmd_graph(args: argparse.Namespace) -> int:
    import_apps(args.path, args.app)
    machine = resolve_machine(args.machine)
    if issubclass(machine, Job):
        raise CommandError(
            f"{machine.__gd_name__} is a gd.Job: one perform, no transitions to draw"
        )
    print(mermaid(machine), end="")
    return 0
