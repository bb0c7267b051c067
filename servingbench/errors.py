"""The suite's error bases, in a module that imports nothing, so any layer can raise them without a circle.

A ``ConfigError`` is a mistake in what the user wrote (the expectations table, a workload, a dataset file, a
config): it fails the test that meets it, in every mode. It is never a ``ServerUnavailable``, which a
``--server-url`` or ``--replay`` run turns into a skip: a broken workload skipped there would pass unnoticed.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config or workload entry that cannot be used; the message names the entry and the fix."""
