"""Loading and checking optimization.yaml: the schema (fields -> targets, society, compat -> models) and the loader."""
