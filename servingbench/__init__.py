"""servingbench: a pytest + pytest-benchmark performance suite for LLM serving (vLLM against the HF engine).

The pytest plugin loads from its entry point; this package's face is what a user's own perf test needs: a session
that starts servers and measures workloads, the records and metrics it produces, and the table's bounds.

    def test_my_config(bench, expectations, measure_or_skip):
        m = measure_or_skip("vllm", bench.workload(expectations, "lab", "vllm"))
        assert m.value("median_ttft_ms") < 500
"""

from servingbench.load.generator import LoadShape, run_load
from servingbench.errors import ConfigError
from servingbench.load.workload import Workload
from servingbench.measure.environment import Hardware
from servingbench.measure.measurement import Measurement, MissingFigure
from servingbench.measure.metrics import SLO, BenchmarkMetrics, compute_metrics
from servingbench.measure.records import RequestRecord
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.pool import ServerUnavailable
from servingbench.servers.process import ServerProcess, ServerStartError
from servingbench.servers.vllm import VLLMConfig
from servingbench.servers.models import ModelSpec, get_model
from servingbench.suite.bench import Bench
from servingbench.expect.bounds import Bound, ExpectationTable, check, load_table

__all__ = [  # sorted, and exactly the names imported above (tests/unit/test_exported_members.py)
    "Bench", "BenchmarkMetrics", "Bound", "check", "compute_metrics", "ConfigError", "ExpectationTable",
    "get_model", "Hardware", "HFConfig", "load_table", "LoadShape", "Measurement", "MissingFigure", "ModelSpec",
    "RequestRecord", "run_load", "ServerProcess", "ServerStartError", "ServerUnavailable", "SLO", "VLLMConfig",
    "Workload",
]
