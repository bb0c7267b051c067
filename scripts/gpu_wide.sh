#!/usr/bin/env bash
# The suite's own path for a wide run on a lent GPU (issue #19): a user project whose only workload is 1024
# requests at concurrency 512, measured by `pytest --gpu` (the suite starts vLLM, splits the run over client
# worker processes and attaches the client self-test). Run detached after ../shared/gpu's install:
#   setsid nohup bash scripts/gpu_wide.sh OUT_DIR > /root/gpu_wide.log 2>&1 &
set -uo pipefail
out=${1:?usage: gpu_wide.sh OUT_DIR}
repo=$(pwd)
mkdir -p "$out" /root/wide/perf
cat > /root/wide/perf/expected_performance.toml <<'TOML'
[workloads.wide]
gpu = { num_requests = 1024, concurrency = 512, prompt_len = 128, output_len = 128 }

[configs.vllm]
engine = "vllm"

[[expect]]
hardware = "any-gpu"
model = "*"
config = "vllm"
workload = "wide"
failure_rate = { max = 0 }
TOML
cp "$repo/perf/test_expected_performance.py" /root/wide/perf/
printf '[pytest]\n' > /root/wide/pytest.ini
cd /root/wide && python3 -m pytest perf --gpu -p servingbench.plugin -p no:cacheprovider -rA \
  --results-dir "$out/results" 2>&1 | tee "$out/pytest.log"
touch "$out/done"
