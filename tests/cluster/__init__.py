"""A multi-process cluster harness and an invariant checker for reliability tests.

``workload`` defines machines that exercise every primitive and log each execution to
an append-only ``effects`` table; ``node`` runs one worker node as an OS process;
``harness`` starts, kills, freezes and stops nodes; ``checker`` reads the database and
the effect log and reports every broken invariant. Used by ``tests/test_faults.py``
and ``bench/soak.py``.
"""
