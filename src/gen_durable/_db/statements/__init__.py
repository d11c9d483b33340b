"""Every SQL statement of gen_durable, one module per concept.

=================  ==========================================================
``inserts``        new instances and children (``insert``, ``insert_unkeyed``)
``pick``           claiming a batch of one queue (``pick``, ``next_for_key``)
``flow``           the pick's K slots and buckets; rate limits and schedules (§23)
``leases``         ``heartbeat``, ``hold_lease``, ``reap``, ``release``
``outcomes``       ``lock_claimed``, ``complete``, ``schedule_childs``
``signals``        ``signal`` delivery and ``listen``
``timers``         waits ending at their deadline (``fire_timers``, ``next_due``)
``reads``          ``get``, ``inbox``, ``children``
``effects``        an outcome's ``spawn`` and ``send``
``keys``           by business key: ``signal_key``, ``start_signal``, ``get_key``
``admin``          operator reads and commands (``admin.*``)
``control``        ``cancel`` with cascade and ``retry`` (``control.*``)
``listing``        filtered pages, bulk batches, purge and retention (``listing.*``, ``gc.*``)
``dashboard``      the dashboard's and the metrics gauges' reads (``dashboard.*``)
``migrations``     the installed version and the migrators' lock (``migrate.*``)
``testing``        what ``gen_durable.testing.drain`` adds (``testing.*``)
=================  ==========================================================

Importing this package registers them all in
:data:`~gen_durable._db.statement.REGISTRY`; the DDL of each schema version is in
:mod:`gen_durable._db.schema`.
"""

from __future__ import annotations

from . import (
    admin,
    control,
    dashboard,
    effects,
    flow,
    inserts,
    keys,
    leases,
    listing,
    migrations,
    outcomes,
    pick,
    reads,
    signals,
    testing,
    timers,
)

__all__ = [
    "admin",
    "control",
    "dashboard",
    "effects",
    "flow",
    "inserts",
    "keys",
    "leases",
    "listing",
    "migrations",
    "outcomes",
    "pick",
    "reads",
    "signals",
    "testing",
    "timers",
]
