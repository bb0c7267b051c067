"""The README's "In your own project" section is runnable as written: its table loads with the suite's own loader
and asserts the bounds it shows, and its GitHub Actions workflow is valid YAML with the steps the text describes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from servingbench.expect.bounds import load_table

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    return text[text.index("## In your own project"):text.index("## The expected-performance table")]


def block(lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)```", section(), re.S)
    assert found, f"no {lang} block in the README's own-project section"
    return found.group(1)


def test_the_readme_table_loads_and_holds_its_bounds(tmp_path: Path) -> None:
    path = tmp_path / "expected_performance.toml"
    path.write_text(block("toml"))
    table = load_table(path)
    assert [(b.hardware, b.config, b.metric) for b in table.bounds] == [
        ("any-gpu", "vllm", "failure_rate"), ("any-gpu", "vllm", "median_ttft_ms")]
    assert table.workload("lab", gpu=True).load.concurrency == 16


def test_the_readme_workflow_is_valid_yaml_running_the_table_with_junit() -> None:
    yaml = pytest.importorskip("yaml")
    flow = yaml.safe_load(block("yaml"))
    job = flow["jobs"]["perf"]
    assert "gpu" in job["runs-on"] and "self-hosted" in job["runs-on"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert any("pytest perf/ --gpu" in r and "--junitxml" in r for r in runs), runs
    upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload and upload[0]["if"] == "always()" and upload[0]["with"]["path"] == "results/"
