"""Registers the servingbench pytest plugin for tests/ and perf/ (options, fixtures, hooks: servingbench/plugin.py)."""

pytest_plugins = ["servingbench.plugin.hooks", "servingbench.plugin.baselines"]
