"""A config error fails, in every mode: it is never a ServerUnavailable, which --server-url and --replay skip.

Before: the session caught a broken workload's ConfigError (or DatasetError) while building its requests and raised
ServerUnavailable with its message, so ``measure_or_skip`` skipped it under --server-url and the broken workload
passed unnoticed. ``load/lengths.py`` imported ConfigError from ``load/workload.py``, which imports it: the one
import circle of the package; ``servingbench.errors`` holds it now.

No server: the session measures a --server-url on a closed port, and the workload breaks before any request.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import servingbench
from servingbench.errors import ConfigError
from servingbench.load.dataset_files import DatasetError
from servingbench.load.workload import Workload
from servingbench.measure.environment import Hardware
from servingbench.servers.pool import ServerUnavailable
from servingbench.suite import bench as bench_mod
from servingbench.servers.models import get_model
from servingbench.suite.run_settings import RunSettings

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bench_mod.Bench:
    monkeypatch.setattr(bench_mod.Bench, "_remote_model", lambda self, url: "m")
    settings = RunSettings(Hardware("cpu-2c-test", False, cores=2), get_model("cpu-llama-36m"), "/m")
    return bench_mod.Bench(settings, tmp_path / "results", {"vllm": {"engine": "vllm"}}, server_url=CLOSED)


def test_a_broken_workload_under_server_url_raises_a_config_error_not_a_skip(remote, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    broken = Workload.of("lab", 4, 2, prompt_len=8, output_len=5, kind="dataset", dataset=str(missing),
                         warmup_requests=0)
    for _ in range(2):  # the second call answers from the session's cache, the same way
        with pytest.raises(ConfigError, match="nowhere.jsonl") as e:
            remote.measure("vllm", broken)
        assert not isinstance(e.value, ServerUnavailable)
    assert [k for k, msg in remote.errors.items() if "nowhere.jsonl" in msg] == list(remote.errors)


def test_an_unavailable_server_is_still_a_server_unavailable(remote) -> None:
    with pytest.raises(ServerUnavailable, match="needs a server this suite starts"):
        remote.measure("hf", Workload.of("lab", 4, 2, prompt_len=8, output_len=5),
                       config=remote.settings.server_config("hf"))


def test_config_error_is_one_class_everywhere_and_a_dataset_error_is_one() -> None:
    from servingbench.load import workload

    assert workload.ConfigError is ConfigError is servingbench.ConfigError
    assert issubclass(DatasetError, ConfigError) and issubclass(ConfigError, ValueError)
    assert not issubclass(ConfigError, ServerUnavailable)


def test_lengths_and_workload_import_no_circle() -> None:
    """``load/lengths.py`` takes ConfigError from ``servingbench.errors``, which imports nothing of the suite."""
    root = Path(servingbench.__file__).parent

    def imports(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert "servingbench.load.workload" not in imports(root / "load" / "lengths.py")
    assert not {n for n in imports(root / "errors.py") if n.startswith("servingbench")}


def test_measure_or_skip_fails_a_broken_workload_under_server_url_and_still_skips_a_missing_server(
        remote, tmp_path: Path) -> None:
    from servingbench.plugin import fixtures

    measure_or_skip = fixtures.measure_or_skip._get_wrapped_function()(remote)
    broken = Workload.of("lab", 4, 2, prompt_len=8, output_len=5, kind="dataset",
                         dataset=str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(pytest.fail.Exception, match="nowhere.jsonl"):
        measure_or_skip("vllm", broken)
    with pytest.raises(pytest.skip.Exception, match="needs a server this suite starts"):
        measure_or_skip("hf", Workload.of("lab", 4, 2, prompt_len=8, output_len=5),
                        config=remote.settings.server_config("hf"))
