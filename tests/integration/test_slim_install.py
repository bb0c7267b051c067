"""``pip install servingbench`` with no extras, as a user gets it: the wheel built from this checkout goes into a
fresh venv that has no torch, transformers, tokenizers or safetensors, and a user's project that is only
``perf/expected_performance.toml`` gates a real server from it with ``--server-url``.

The server is the session's HF engine on the generated model, started from this (full) environment: the slim
venv measures it, so its figures are a real server's. A bound it can meet passes; a bound no server can meet
fails, naming the measured value.

Speed: the wheel's dependencies are installed from a wheelhouse under the model cache
(``~/.cache/servingbench/wheelhouse``, ``SERVINGBENCH_CACHE``), offline (``--no-index``), which the first run
fills with ``pip download`` from the configured index; a wheelhouse that lacks a new dependency is refilled once.
Measured on the 2-core machine CI runs on (2026-12-06, the test alone, with other work on the machine or without):
the install took 4-10 s from a warm wheelhouse and 19 s filling a cold one (the configured index, with its local
mirrors); the whole test 24-45 s, the HF server's start included (a plain ``pip install`` of the wheel into a venv
with pip took 56 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from servingbench.servers.process import ServerProcess
from servingbench.servers.models import cache_root

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "vllm")
PIP_TIMEOUT_S = 600  # a cold wheelhouse downloads the base's wheels: ~100 MB (numpy, scipy, matplotlib, ...)
TABLE = """
[workloads.tiny]
cpu = {{ num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }}
gpu = {{ num_requests = 4, concurrency = 2, prompt_len = 16, output_len = 4, warmup_requests = 0 }}

[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "any-cpu"
model = "*"
config = "vllm"
workload = "tiny"
source = "slim install"
{bound}
"""


def pip(*args: str, into: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This environment's pip; ``into`` a venv through ``--python``, so the slim venv needs no pip of its own."""
    target = ["--python", str(into / "bin" / "python")] if into else []
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *target, *args],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=without_checkout())


def without_checkout() -> dict[str, str]:
    """The environment less PYTHONPATH: a checkout on it (with the egg-info a build leaves there) would count as
    servingbench installed, to pip and to the slim venv's pytest, which must load the wheel's plugin instead."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def checked(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{what} failed:\n{(done.stdout + done.stderr)[-3000:]}"
    return done


def build_wheel(out: Path) -> Path:
    """The checkout as a wheel, built with this environment's setuptools (no isolated build env to download)."""
    checked(pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)), "building the wheel")
    return next(out.glob("servingbench-*.whl"))


def install_slim(wheel: Path, venv: Path) -> float:
    """A fresh venv with the wheel and its base dependencies, nothing else; returns the install's seconds."""
    checked(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                           text=True, timeout=120), "creating the venv")
    house = cache_root() / "wheelhouse"
    t0 = time.monotonic()
    offline = ("install", "-q", "--no-compile", "--no-index", "--find-links", str(house), str(wheel))
    done = pip(*offline, into=venv) if house.is_dir() else None
    if done is None or done.returncode != 0:  # a cold wheelhouse, or one that lacks a dependency added since
        checked(pip("download", "-q", "-d", str(house), str(wheel)), f"filling the wheelhouse {house}")
        (house / wheel.name).unlink(missing_ok=True)  # this checkout's wheel is built afresh every time
        checked(pip(*offline, into=venv), "installing the wheel from the wheelhouse")
    return time.monotonic() - t0


def run_user_project(venv: Path, root: Path, bound: str, url: str) -> subprocess.CompletedProcess[str]:
    """The user's project (a table, no test file, no conftest) run with the slim venv's own pytest; the plugin
    comes from the wheel's entry point, not from this checkout (PYTHONPATH is dropped)."""
    (root / "perf").mkdir(parents=True, exist_ok=True)
    (root / "perf" / "expected_performance.toml").write_text(TABLE.format(bound=bound))
    (root / "pytest.ini").write_text("[pytest]\n")
    env = without_checkout()
    env["SERVINGBENCH_CACHE"] = str(root / "cache")  # a model built here would show up in it
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "perf", "-p", "no:cacheprovider", "-q",
                           "-rA", "--server-url", url, "--hardware-key", "test-hw", "--results-dir",
                           str(root / "results")], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_base_install_has_no_torch_and_gates_a_real_server(tmp_path: Path, hf_server: ServerProcess) -> None:
    t0 = time.monotonic()
    venv = tmp_path / "slim"
    seconds = install_slim(build_wheel(tmp_path / "dist"), venv)
    python = str(venv / "bin" / "python")
    for module in HEAVY:
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=60,
                               env=without_checkout(), cwd=tmp_path)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"the base install has {module}"
    where = subprocess.run([python, "-c", "import servingbench; print(servingbench.__file__)"], capture_output=True,
                           text=True, timeout=60, env=without_checkout(), cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), f"servingbench is not the wheel's: {where.stdout}{where.stderr}"

    meets = run_user_project(venv, tmp_path / "meets", "failure_rate = { max = 0 }", hf_server.url)
    out = meets.stdout + meets.stderr
    assert meets.returncode == 0, out[-3000:]
    assert re.findall(r"^PASSED perf/expected_performance.toml::test_expectation\[(.+?)\]", out, re.M) == [
        "any-cpu:vllm:failure_rate@tiny"], out[-3000:]
    assert not (tmp_path / "meets" / "cache" / "models").exists(), "the --server-url session built a model"

    impossible = run_user_project(venv, tmp_path / "impossible", "output_throughput = { min = 1e9 }", hf_server.url)
    out = impossible.stdout + impossible.stderr
    assert impossible.returncode == 1, out[-3000:]
    assert re.search(r"output_throughput = [0-9.e+]+, expected >= 1e\+09", out), out[-3000:]
    assert "FAILED perf/expected_performance.toml::test_expectation[any-cpu:vllm:output_throughput@tiny]" in out
    print(f"slim install: {seconds:.1f} s; whole test: {time.monotonic() - t0:.1f} s")
