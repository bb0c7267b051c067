"""The table of expected performance: its schema (checked when loaded), the bounds and their verdicts, and where
the default tables are. Reads measurements; starts nothing."""
