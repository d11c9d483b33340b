"""Private runtime machinery: per-queue schedulers, the step executor, group commit,
and the lease services (heartbeat, reaper). ``gen_durable.engine`` wires them up."""
