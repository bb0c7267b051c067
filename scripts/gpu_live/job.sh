#!/usr/bin/env bash
# Live measurement of the regression gate on one GPU (issue #29 item 6, GPU part). Runs detached:
#   setsid nohup bash /root/job/job.sh > /root/g/job.log 2>&1 &
# From /root/repo (a private copy of the repo, so later calls' tree syncs cannot touch it). Writes to $G (/root/g).
# PLAN=full (default) | slim | extras (EXTRAS only: perf, stored, calib, stored2, hf, selftest). Phases (each saved as it completes):
#   servers  A (8001) and B (8002), the GPU profile's vLLM config at --gpu-memory-utilization 0.42 each; B is started
#            once A has allocated its KV cache (vLLM's memory profiling counts another process's allocations as its own)
#   aa1 aa2  A/A: pytest perf/test_gate.py --gate --gpu --server-url A --ab-server-url B --gate-rounds 3
#   stored   stored-baseline mode against baselines/<key>/rounds.json on A alone, while B restarts with --enforce-eager
#   slow1 slow2  the same A/B command against the eager B (planted slowdown: no CUDA graphs, no torch.compile)
# DRYRUN=1: the same flow on CPU with servingbench's SSE peer as both servers (no --gpu), to test the script.
set -uo pipefail
export PYTHONUNBUFFERED=1
G=${G:-/root/g}
REPO=${REPO:-/root/repo}
DRYRUN=${DRYRUN:-0}
PY=${PY:-python3}
mkdir -p "$G"
cd "$REPO" || exit 1
T0=$(date +%s)
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
echo "$$" > "$G/job.pid"

if [ "$DRYRUN" = 1 ]; then
  GPU=(); ROUNDS=${ROUNDS:-2}
else
  GPU=(--gpu); ROUNDS=${GATE_ROUNDS:-3}
fi
BASE="$REPO/baselines"
# the plugin: by its entry point where servingbench is installed (or its egg-info is on the path), else by name
PLUGIN=(-p servingbench.plugin)
$PY -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.value.startswith('servingbench') for e in m.entry_points(group='pytest11')) else 1)" && PLUGIN=()
echo "plugin args: ${PLUGIN[*]:-entry point}"
MODEL=$($PY -c "from servingbench.servers.models import get_model, materialize; print(materialize(get_model('llama-2-7b')))") \
  || { say "model dir failed"; touch "$G/done"; exit 1; }
say "model dir $MODEL; gate rounds $ROUNDS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$G/gpu.txt" 2>&1
cat "$G/gpu.txt"

server_cmd() {  # port [extra args...]: the GPU profile's vLLM command (servingbench/servers/vllm.py VLLMConfig.command)
  local port=$1; shift
  if [ "$DRYRUN" = 1 ]; then
    local iv=5; [ "${1:-}" = --enforce-eager ] && iv=8
    echo "$PY -m servingbench.servers.sse_peer --host 127.0.0.1 --port $port --interval-ms $iv --ttft-ms 50"
  else
    echo "$PY -m vllm.entrypoints.openai.api_server --model $MODEL --host 127.0.0.1 --port $port --dtype float16 \
--served-model-name llama-2-7b --max-model-len 4096 --kv-cache-dtype auto --load-format dummy --tensor-parallel-size 1 \
--gpu-memory-utilization 0.42 $*"
  fi
}
start_server() {  # name port [extra]: own session (process group = its pid), log in $G
  local name=$1 port=$2; shift 2
  local cmd; cmd=$(server_cmd "$port" "$@")
  echo "$cmd" > "$G/$name.cmd"
  setsid $cmd > "$G/$name.log" 2>&1 < /dev/null &
  echo $! > "$G/$name.pid"
  say "started $name on $port (pid $!): $cmd"
}
healthy() { curl -sf -m 2 "http://127.0.0.1:$1/health" > /dev/null 2>&1 \
  || $PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2)" 2>/dev/null; }
alive() { kill -0 "$(cat "$G/$1.pid")" 2>/dev/null; }
wait_healthy() {  # name port timeout_s
  local t=0
  while ! healthy "$2"; do
    alive "$1" || { say "$1 exited before healthy"; tail -40 "$G/$1.log"; return 1; }
    [ "$t" -ge "$3" ] && { say "$1 not healthy after $3 s"; tail -20 "$G/$1.log"; return 1; }
    sleep 2; t=$((t + 2))
  done
  say "$1 healthy on $2"
}
stop_server() {  # name: TERM the process group, KILL after 20 s
  local pid; pid=$(cat "$G/$1.pid" 2>/dev/null) || return 0
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 1 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null
  say "stopped $1 (pgid $pid)"
}
finish() {
  stop_server A; stop_server B; stop_server Be; stop_server B2
  nvidia-smi >> "$G/gpu.txt" 2>&1
  say "job done"; touch "$G/done"
}
trap finish EXIT

gate() {  # name [pytest args...]: one gate run, its stdout in $G/name.log, results in $G/name/, JUnit $G/name.xml
  local name=$1; shift
  say "gate $name: start"
  $PY -m pytest perf/test_gate.py --gate "${GPU[@]}" "${PLUGIN[@]}" -p no:cacheprovider \
    --gate-rounds "$ROUNDS" --baseline-dir "$BASE" --results-dir "$G/$name" --junitxml "$G/$name.xml" \
    -o addopts="-ra --benchmark-disable-gc" "$@" > "$G/$name.log" 2>&1
  local rc=$?
  say "gate $name: exit $rc"
  return $rc
}
gate_stored() {  # [pytest args...]: the stored-baseline run against $BASE; a baseline refused as recorded on
  # something else is kept as stored-refused.log, and the run repeated with every mismatch allowed (noted in its report)
  gate stored "$@"
  if grep -q "recorded on something else" "$G/stored.log"; then
    say "stored baseline refused (mismatch in stored-refused.log); again with --gate-allow-mismatch all"
    mv "$G/stored.log" "$G/stored-refused.log"; rm -rf "$G/stored"
    gate stored "$@" --gate-allow-mismatch all
  fi
}
AB=(--server-url http://127.0.0.1:8001 --ab-server-url http://127.0.0.1:8002)

start_a_then() {  # name port [extra]: A on 8001, then this second server once A has allocated its KV cache.
  # Capture starts after A's KV cache is allocated (and its compile cache written): the second server's memory
  # profiling then sees only A's graph pool grow, and it finds A's compile cache warm.
  start_server A 8001
  for t in $(seq 1 450); do
    grep -qE "Capturing CUDA graphs|Graph capturing finished" "$G/A.log" 2>/dev/null && break
    healthy 8001 && break
    alive A || { say "A exited"; tail -40 "$G/A.log"; exit 1; }
    sleep 1
  done
  say "A has allocated its KV cache (capturing graphs, or up)"
  start_server "$@"
}
gpu_free_wait() {  # until at most ~60% of the GPU's memory is used (B's has come back), 60 s at most
  [ "$DRYRUN" = 1 ] && return 0
  for _ in $(seq 1 60); do
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits | \
      awk -F, '{exit !($1 < 0.6 * $2)}' && return 0
    sleep 1
  done
  say "GPU memory still held: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"
}
if [ "${PLAN:-full}" = slim ] || [ "${PLAN:-full}" = extras ]; then
 has() { [[ ",${EXTRAS:-perf,selftest}," == *",$1,"* ]]; }
 if [ "$PLAN" = slim ]; then
  # ---- slim plan (little device time): A, then the eager B once A has allocated its KV cache; stored-baseline mode
  # on A while B starts; the planted slowdown; then B in A's config (warm compile cache) and the A/A ----
  start_a_then Be 8002 --enforce-eager
  wait_healthy A 8001 600 || exit 1
  gate_stored --server-url http://127.0.0.1:8001
  wait_healthy Be 8002 600 || exit 1
  grep -hE "GPU KV cache size|Available KV cache memory|torch.compile take|Graph capturing finished" "$G/A.log" "$G/Be.log"
  gate slow1 "${AB[@]}"
  stop_server Be; gpu_free_wait
  start_server B 8002
  wait_healthy B 8002 600 || exit 1
  gate aa1 "${AB[@]}"
  say "slim plan done in $(( $(date +%s) - T0 )) s"
  [ "$DRYRUN" = 1 ] && exit 0
  # ---- #28 item 14: the self-test at c512 with the two vLLM servers idle on the host, then with none ----
  selftests() {  # tag
    $PY - "$G/cpu-$1.txt" <<'PYEOF'
import sys, time, psutil
procs = [p for p in psutil.process_iter(["cmdline"]) if "vllm" in " ".join(p.info["cmdline"] or [])]
for p in procs:
    try: p.cpu_percent(None)
    except psutil.Error: pass
time.sleep(10)
total = 0.0
for p in procs:
    try: total += p.cpu_percent(None)
    except psutil.Error: pass
open(sys.argv[1], "w").write(f"{len(procs)} vllm processes, {total:.1f}% of one core over 10 s (host {psutil.cpu_count()} cores)\n")
PYEOF
    cat "$G/cpu-$1.txt"
    for pp in 2 4; do
      say "selftest $1 peer $pp"
      $PY scripts/client_bench.py --workers ${ST_WORKERS:-4} --concurrency 512 --peer-processes $pp \
        --out "$G/selftest-$1-p$pp.json" > "$G/selftest-$1-p$pp.log" 2>&1
      tail -5 "$G/selftest-$1-p$pp.log"
    done
  }
  has selftest && selftests idle-servers
  stop_server A; stop_server B; gpu_free_wait
 fi
  # PLAN=extras: only the phases named in EXTRAS, no gate runs above, in this order: perf (its cold start fills the
  # compile cache, so later restarts are warm), stored (against the committed rounds.json), hf, then the calibration
  # (what the gate reads next lease; last, as the longest, so a short lease loses only it) and a stored-baseline run
  # against what it wrote (a new lifetime the suite starts: an A/A across restarts)
  if has perf; then  # ---- #26 item 2: energy per token (lab load at c10 and its single-stream c1) on vLLM
    say "perf lab load --gpu --report: start"
    $PY -m pytest perf/test_lab_load.py -k "${PERF_K:-vllm}" --gpu "${PLUGIN[@]}" -p no:cacheprovider --report \
      --results-dir "$G/perf" --junitxml "$G/perf.xml" -o addopts="-ra --benchmark-disable-gc" > "$G/perf.log" 2>&1
    say "perf: exit $?"
  fi
  if has stored; then  # #29 item 6: a new lifetime the suite starts, against the committed rounds.json of an earlier lease
    gate_stored -k vllm --gate-lifetimes "${STORED_L:-1}"
  fi
  # ---- #26 item 2, HF: the lab's gpu-hf row shortened in this private copy (HF_N requests x HF_LEN tokens), so it fits
  if has hf; then
    cp perf/expected_performance.toml "$G/table.orig"
    sed -i "s/^gpu-hf = .*/gpu-hf = { num_requests = ${HF_N:-20}, concurrency = 10, prompt_len = 512, output_len = ${HF_LEN:-64} }/" \
      perf/expected_performance.toml
    say "perf hf: start ($(grep '^gpu-hf' perf/expected_performance.toml))"
    timeout "${HF_S:-300}" $PY -m pytest perf/test_lab_load.py -k "hf and batch_efficiency" --gpu "${PLUGIN[@]}" -p no:cacheprovider \
      --report --results-dir "$G/perf-hf" -o addopts="-ra --benchmark-disable-gc" > "$G/perf-hf.log" 2>&1
    say "perf hf: exit $?"
    cp "$G/table.orig" perf/expected_performance.toml
  fi
  if has calib; then
    say "calibrate: start"
    timeout "${CALIB_S:-600}" $PY -m servingbench.cli calibrate --gpu --configs vllm --lifetimes "${CALIB_L:-4}" \
      --rounds "${CALIB_R:-2}" --baseline-dir "$G/calib-baselines" --results-dir "$G/calib" --no-write > "$G/calib.log" 2>&1
    say "calibrate: exit $?"
  fi
  if has stored2; then
    gate stored2 -k vllm --baseline-dir "$G/calib-baselines" --gate-lifetimes "${STORED_L:-1}"
  fi
  has selftest2 && selftests no-server
  say "all done in $(( $(date +%s) - T0 )) s"
  exit 0
fi
# ---- servers: A, then B once A has allocated its KV cache (B then also finds A's compile cache warm) ----
start_a_then B 8002
wait_healthy A 8001 600 || exit 1
wait_healthy B 8002 600 || exit 1
grep -hE "GPU KV cache size|Available KV cache memory|torch.compile take|Graph capturing finished" "$G/A.log" "$G/B.log"

# ---- A/A (the second A/A comes last: the device budget may end the job first) ----
gate aa1 "${AB[@]}"

# ---- B restarts with --enforce-eager; meanwhile stored-baseline mode on A alone ----
stop_server B
gpu_free_wait
say "GPU memory after stopping B: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null)"
start_server Be 8002 --enforce-eager
gate_stored --server-url http://127.0.0.1:8001
if ! wait_healthy Be 8002 600; then
  say "Be failed once; stopping it and starting it again"
  mv "$G/Be.log" "$G/Be-failed.log"; stop_server Be; gpu_free_wait
  start_server Be 8002 --enforce-eager
  wait_healthy Be 8002 600 || exit 1
fi
grep -hE "GPU KV cache size|Available KV cache memory" "$G/Be.log" | tail -2

# ---- planted slowdown, twice ----
gate slow1 "${AB[@]}"
gate slow2 "${AB[@]}"

# ---- B back to the A/A config (warm compile cache), second A/A ----
stop_server Be
gpu_free_wait
start_server B2 8002
wait_healthy B2 8002 600 || exit 1
gate aa2 "${AB[@]}"
say "all phases done in $(( $(date +%s) - T0 )) s"
