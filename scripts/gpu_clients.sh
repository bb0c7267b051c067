#!/usr/bin/env bash
# Client worker processes against vLLM on a lent GPU (issue #19's benchmark): one vLLM server, the 7B shape with
# dummy weights, then scripts/client_bench.py in server mode at concurrency 256, 512 and 1024 with 1 and 8 client
# worker processes, and the self-test against the peer at the same points. Run detached from the repository root
# after ../shared/gpu's install (PYTHONPATH holds vLLM and the repo):
#   setsid nohup bash scripts/gpu_clients.sh OUT_DIR > /root/gpu_clients.log 2>&1 &
set -uo pipefail
out=${1:?usage: gpu_clients.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
model=$(python3 -c "from servingbench.servers.models import get_model, materialize; print(materialize(get_model('llama-2-7b')))")
python3 -m vllm.entrypoints.openai.api_server --model "$model" --served-model-name llama-2-7b --load-format dummy \
  --dtype float16 --max-model-len 4096 --gpu-memory-utilization 0.9 --max-num-seqs 1024 \
  --host 127.0.0.1 --port 8000 > "$out/vllm.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; sleep 5; kill -9 $server 2>/dev/null' EXIT
t0=$(date +%s)
until curl -sf http://127.0.0.1:8000/health > /dev/null; do
  sleep 2
  kill -0 $server 2>/dev/null || { echo "vLLM exited"; tail -40 "$out/vllm.log"; touch "$out/done"; exit 1; }
done
echo "vLLM healthy after $(( $(date +%s) - t0 )) s"
python3 scripts/client_bench.py --server-url http://127.0.0.1:8000 --model llama-2-7b --vocab-size 32000 \
  --workers "${WORKERS:-1,8}" --concurrency "${CONCURRENCY:-256,512,1024}" --out "$out/client_bench_vllm.json" \
  2>&1 | tee "$out/client_bench_vllm.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
nproc > "$out/nproc.txt"
touch "$out/done"
