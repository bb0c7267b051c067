#!/usr/bin/env bash
# Device, one call, no vLLM: energy per output token of the HF engine (issue #26 item 2) from NVML's total-energy
# counter, on the lab load (c10) and its single-stream run (c1), with --report. For a session whose device budget
# cannot carry vLLM (7 calls); the image's torch, transformers, pynvml, aiohttp, scipy and matplotlib serve it.
# Carry .gpuwheels/hfe: the c7 wheels (pytest-asyncio, pydantic, fastapi, uvicorn, ...), openai, and the 7B-shaped
# model folder (config and tokenizer; weights are drawn on the GPU, --load-format dummy).
# Usage: bash scripts/gpu_live/hf_energy.sh [REQUESTS] [OUTPUT_LEN] [TIMEOUT_S]. The lab's gpu-hf row (30 x 256
# tokens) is shortened to REQUESTS x OUTPUT_LEN in the device's copy only, so one call fits.
set -u
T0=$(date +%s)
N=${1:-20}; OUT_LEN=${2:-64}; LIMIT=${3:-240}
mkdir -p /root/site /root/g /root/sbcache/models
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site \
  .gpuwheels/hfe/*.whl > /root/g/install.log 2>&1 || { tail -20 /root/g/install.log; exit 1; }
cp -a .gpuwheels/hfe/models/* /root/sbcache/models/
# no vLLM here: --gpu needs its CUDA build only for selected vLLM configs (plugin/state.py, check_gpu_engines)
echo "install done +$(( $(date +%s) - T0 ))s"
export PYTHONPATH=/root/site:$PWD SERVINGBENCH_CACHE=/root/sbcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,memory.used,power.draw,power.limit --format=csv,noheader
sed -i "s/^gpu-hf = .*/gpu-hf = { num_requests = $N, concurrency = 10, prompt_len = 512, output_len = $OUT_LEN }/" \
  perf/expected_performance.toml
grep -n "^gpu-hf" perf/expected_performance.toml
timeout "$LIMIT" python3 -m pytest perf/test_lab_load.py -k "hf and batch_efficiency" --gpu -p servingbench.plugin \
  -p no:cacheprovider --report --results-dir /root/g/perf -o addopts="-ra" > /root/g/perf.log 2>&1
echo "pytest rc $? +$(( $(date +%s) - T0 ))s"
tail -15 /root/g/perf.log | cut -c1-250
grep -A8 "Energy over each" /root/g/perf/report/report.md 2>/dev/null | cut -c1-300
python3 - <<'EOF'
import json, pathlib
for p in sorted(pathlib.Path("/root/g/perf").rglob("measurements/*.json")):
    d = json.loads(p.read_text())
    t = d.get("telemetry") or {}
    keep = {k: v for k, v in t.items() if "energy" in k or "power" in k}
    print(p.name, d.get("metrics", {}).get("output_throughput"), keep)
EOF
tar czf "$OUT/hf_energy.tgz" --exclude='*.png' -C /root/g perf perf.log install.log 2>/dev/null; ls -la "$OUT"
