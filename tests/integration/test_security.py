"""Security of what the suite starts and writes (HF engine here; vLLM's checks share the soak's server in
test_soak.py, so that the slow vLLM start-up is paid once).

- Servers listen on 127.0.0.1 unless the user asks otherwise: read from the process table, not from flags.
- An API key reaches the server (through the environment, not the command line) and the load client sends it.
- No secret (the API key, a hub token in the environment) ends up in results, logs, summaries or pytest's output:
  a real measurement runs in an inner pytest session with a key, then every file is searched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import psutil
import pytest

from servingbench.cli import build_parser
from servingbench.load.synthetic import random_token_prompts
from servingbench.load.generator import LoadShape, run_load
from servingbench.servers.process import LOCALHOST, ServerProcess
from servingbench.servers.hf.config import HFConfig
from servingbench.servers.vllm import VLLMConfig

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
MODEL = "cpu-llama-36m"
API_KEY = "sk-servingbench-test-3f9c1a7e5d"
HUB_TOKEN = "hf_servingbenchTESTtoken0123456789"


def listening_addresses(server: ServerProcess) -> set[tuple[str, int]]:
    """Every listening TCP address of the server's process tree."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    addresses = set()
    for p in [root, *root.children(recursive=True)]:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                addresses.add((c.laddr.ip, c.laddr.port))
    return addresses


def assert_loopback_only(server: ServerProcess) -> None:
    addresses = listening_addresses(server)
    assert (LOCALHOST, server.port) in addresses
    assert {ip for ip, _ in addresses} == {LOCALHOST}, addresses


def test_hf_server_listens_on_loopback_only(hf_server: ServerProcess) -> None:
    assert_loopback_only(hf_server)


def test_loopback_is_the_default_everywhere_a_host_is_chosen() -> None:
    """The lifecycle's default host, the HF CLI's default, and the host vLLM is told (its own default is 0.0.0.0)."""
    assert ServerProcess(HFConfig(model="m"), "/tmp").host == LOCALHOST
    assert build_parser().parse_args(["serve-hf", "--model", "m"]).host == LOCALHOST
    cmd = VLLMConfig(model="m").command(LOCALHOST, 8000)
    assert cmd[cmd.index("--host") + 1] == LOCALHOST
    hf_cmd = HFConfig(model="m").command("0.0.0.0", 8000)  # a user who asks otherwise gets what was asked
    assert hf_cmd[hf_cmd.index("--host") + 1] == "0.0.0.0"


def test_hf_api_key_through_run_load(model_dir: str, tmp_path: Path) -> None:
    """The key goes to the server through its environment (never argv) and ``run_load(api_key=...)`` sends it;
    without it, or with a wrong one, every request is a counted 401."""
    config = HFConfig(model=model_dir, served_model_name=MODEL, dtype="float32", max_model_len=1024)
    specs = random_token_prompts(3, prompt_len=8, output_len=3, vocab_size=8192, seed=5)
    with ServerProcess(config, tmp_path, api_key=API_KEY, startup_timeout=180) as server:
        assert server.proc is not None
        assert API_KEY not in " ".join(psutil.Process(server.proc.pid).cmdline())
        for key in (None, "sk-wrong"):
            refused = asyncio.run(run_load(server.url, MODEL, specs, LoadShape(timeout_s=30), api_key=key))
            assert all(r.status == 401 and r.error and r.error.startswith("HTTP 401") for r in refused.records)
            assert refused.metrics().errors == {"HTTP 401": 3}
        ok = asyncio.run(run_load(server.url, MODEL, specs, LoadShape(timeout_s=60), api_key=API_KEY))
        assert all(r.success and r.output_tokens == 3 for r in ok.records), [r.error for r in ok.records]
        assert API_KEY not in server.log_path.read_text()


INNER_TEST = textwrap.dedent('''
    import json, urllib.error, urllib.request
    import pytest
    from servingbench.load.workload import Workload

    def test_small_measurement_with_a_key(bench):
        server = bench.pool.get(bench.config("hf"))
        req = urllib.request.Request(server.url + "/v1/models")
        with pytest.raises(urllib.error.HTTPError) as e:  # the server really requires the key
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 401
        m = bench.measure("hf", Workload.of("tiny", num_requests=4, concurrency=2, prompt_len=8, output_len=4,
                                         warmup_requests=1))
        assert (m.metrics.completed, m.metrics.failed) == (4, 0)
''')


def test_no_secret_in_results_logs_summaries_or_output(tmp_path: Path,
                                                       user_project: Callable[[str], Path]) -> None:
    """A real measurement through the plugin with ``--api-key`` and HF_TOKEN set: grep every file it wrote."""
    proj = user_project(INNER_TEST)
    results = tmp_path / "results"
    env = {**os.environ, "HF_TOKEN": HUB_TOKEN, "HUGGING_FACE_HUB_TOKEN": HUB_TOKEN}
    env.pop("SERVINGBENCH_API_KEY", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-v", "test_inner.py",
           "--api-key", API_KEY, "--expectations", str(REPO / "perf" / "expected_performance.toml"),
           "--results-dir", str(results)]
    done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, timeout=200, start_new_session=True)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-4000:]

    written = [p for p in results.rglob("*") if p.is_file()]
    names = {p.relative_to(results).parts[0] for p in written}
    assert {"measurements", "logs", "summary.json", "summary.md"} <= names, sorted(map(str, written))
    assert any(p.suffix == ".log" and p.stat().st_size > 0 for p in written)
    for secret in (API_KEY, HUB_TOKEN):
        leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaks, f"secret found in {leaks}"
        assert secret not in output
