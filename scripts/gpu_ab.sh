#!/usr/bin/env bash
# A live A/A of the gate's A/B mode on one GPU: two vLLM servers of the same config side by side (each with 42% of
# the GPU's memory, eager to start quickly), then `pytest perf/test_gate.py --gate --server-url A --ab-server-url B`.
# Run detached from the repository root after ../shared/gpu's install (PYTHONPATH holds vLLM and the repo):
#   setsid nohup bash scripts/gpu_ab.sh OUT_DIR > /root/gpu_ab.log 2>&1 &
set -uo pipefail
out=${1:?usage: gpu_ab.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
model=$(python3 -c "from servingbench.servers.models import get_model, materialize; print(materialize(get_model('llama-2-7b')))")
serve() {  # port
  python3 -m vllm.entrypoints.openai.api_server --model "$model" --served-model-name llama-2-7b --load-format dummy \
    --dtype float16 --max-model-len 4096 --gpu-memory-utilization 0.42 --enforce-eager --host 127.0.0.1 \
    --port "$1" > "$out/vllm-$1.log" 2>&1 &
  echo $! > "$out/vllm-$1.pid"
  for _ in $(seq 1 300); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(\"http://127.0.0.1:$1/health\", timeout=2)" 2>/dev/null && return 0
    sleep 1
  done
  return 1
}
started=$(date +%s)
serve 8001 && serve 8002 || { echo "a server did not start"; tail -20 "$out"/vllm-*.log; }
echo "servers up after $(( $(date +%s) - started )) s"
python3 -m pytest perf/test_gate.py --gate --gpu -p servingbench.plugin -p no:cacheprovider -k vllm \
  --server-url http://127.0.0.1:8001 --ab-server-url http://127.0.0.1:8002 --gate-rounds "${AB_ROUNDS:-3}" \
  --results-dir "$out/ab" -o addopts="-ra --benchmark-disable-gc" 2>&1 | tee "$out/ab.log"
echo "gate exit ${PIPESTATUS[0]} after $(( $(date +%s) - started )) s"
kill $(cat "$out"/vllm-*.pid) 2>/dev/null
touch "$out/done"
