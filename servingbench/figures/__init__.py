"""Figures derived from measurements beyond one run's metrics: efficiency against peaks (MBU, MFU), capacity over
a rate sweep, and the figures of a workload's kind (prefix hits, turns, trace lateness)."""
