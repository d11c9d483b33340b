"""Private database machinery: the schema's DDL, every runtime statement, JSON codec."""
