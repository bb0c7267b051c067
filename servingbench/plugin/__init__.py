"""The servingbench pytest plugin, loaded by its entry point (``[project.entry-points.pytest11]``).

Options: ``plugin/options.py``; fixtures: ``plugin/fixtures.py``; hooks: ``plugin/hooks.py``; the table as tests
(a collector, one item per bound): ``plugin/table.py``; the one session state they all read: ``plugin/state.py``;
the baseline store: ``plugin/baselines.py`` and ``plugin/samples.py``.
"""

from servingbench.plugin.fixtures import bench, expectations, gate_reports, hardware_peaks, measure_or_skip
from servingbench.plugin.hooks import (pytest_addoption, pytest_benchmark_compare_machine_info,
                                       pytest_benchmark_scale_unit, pytest_benchmark_update_json,
                                       pytest_benchmark_update_machine_info, pytest_collection_finish,
                                       pytest_collection_modifyitems, pytest_configure, pytest_deselected,
                                       pytest_runtest_makereport, pytest_runtest_teardown,
                                       pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary,
                                       pytest_unconfigure)
from servingbench.plugin.table import bound, pytest_collect_file

__all__ = [
    "bench", "bound", "expectations", "gate_reports", "hardware_peaks", "measure_or_skip",
    "pytest_addoption", "pytest_configure", "pytest_sessionstart", "pytest_collect_file",
    "pytest_collection_modifyitems", "pytest_deselected", "pytest_collection_finish", "pytest_runtest_makereport",
    "pytest_runtest_teardown", "pytest_benchmark_update_machine_info", "pytest_benchmark_compare_machine_info",
    "pytest_benchmark_update_json", "pytest_benchmark_scale_unit", "pytest_sessionfinish",
    "pytest_terminal_summary", "pytest_unconfigure",
]
