"""Every SQL statement of gen_durable, one module per concept.

=================  ==========================================================
``inserts``        new instances and children (``insert``, ``insert_unkeyed``)
``pick``           claiming a batch of one queue (``pick``, ``next_for_key``)
``leases``         ``heartbeat``, ``hold_lease``, ``reap``, ``release``
``outcomes``       ``lock_claimed``, ``complete``, ``schedule_childs``
``signals``        ``signal`` delivery and ``listen``
``reads``          ``get``, ``inbox``, ``children``
``admin``          operator reads and commands (``admin.*``)
``dashboard``      the dashboard's and the metrics gauges' reads (``dashboard.*``)
``migrations``     the installed version and the migrators' lock (``migrate.*``)
=================  ==========================================================

Importing this package registers them all in
:data:`~gen_durable._db.statement.REGISTRY`; the DDL of each schema version is in
:mod:`gen_durable._db.schema`.
"""

from __future__ import annotations

from . import admin, dashboard, inserts, leases, migrations, outcomes, pick, reads, signals

__all__ = [
    "admin",
    "dashboard",
    "inserts",
    "leases",
    "migrations",
    "outcomes",
    "pick",
    "reads",
    "signals",
]
