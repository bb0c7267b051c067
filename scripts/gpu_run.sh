#!/usr/bin/env bash
# The GPU profile on a lent GPU machine, as it was run on the H200 (README "GPU figures"): the main job
# (`pytest perf/ --gpu`), then calibration of vLLM (rounds in two server lifetimes), results packed into one file.
# Run detached from the repository root after ../shared/gpu's install (PYTHONPATH holds vLLM and the repo):
#   setsid nohup bash scripts/gpu_run.sh OUT_DIR > /root/gpu_run.log 2>&1 &
# The repository is not pip-installed there, so the plugin is named with -p (its entry point does this elsewhere).
set -uo pipefail
out=${1:?usage: gpu_run.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
started=$(date +%s)
python3 -m pytest perf/ --gpu -p servingbench.plugin -p no:cacheprovider --results-dir "$out/perf" \
  -o addopts="-ra --benchmark-disable-gc --benchmark-sort=name" 2>&1 | tee "$out/perf.log"
echo "perf exit ${PIPESTATUS[0]} after $(( $(date +%s) - started )) s" | tee -a "$out/perf.log"
python3 -m servingbench.cli calibrate --gpu --configs "${CAL_CONFIGS:-vllm}" --rounds "${CAL_ROUNDS:-3}" \
  --lifetimes "${CAL_LIFETIMES:-2}" --no-write --results-dir "$out/calibrate" --baseline-dir "$out/baselines" \
  2>&1 | tee "$out/calibrate.log"
echo "calibrate exit ${PIPESTATUS[0]} after $(( $(date +%s) - started )) s" | tee -a "$out/calibrate.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
touch "$out/done"
