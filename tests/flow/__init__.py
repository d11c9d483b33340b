"""Flow control across real worker processes (SPEC §23, §27.4, §27.5)."""
