"""A sample shop whose orders are gen_durable machines."""
