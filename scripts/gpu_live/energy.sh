#!/usr/bin/env bash
# Device, one call after the carries c1..c6: install vLLM, then the lab load (c10) and its single-stream run (c1) on
# vLLM with --report, so the report carries energy per output token (#26 item 2). Results into $OUT.
set -u
T0=$(date +%s)
mkdir -p /root/vx /root/g && cp .gpuwheels/c7/* /root/vx/ || exit 1
bash /root/vx/device_install.sh > /root/g/install.log 2>&1 || { tail -30 /root/g/install.log; exit 1; }
echo "install done +$(( $(date +%s) - T0 ))s"
rm -rf /root/sbcache && cp -a .gpuwheels/job/sbcache /root/sbcache
export PYTHONPATH=/root/site:$PWD SERVINGBENCH_CACHE=/root/sbcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
PLUGIN=(-p servingbench.plugin)
python3 -c "import importlib.metadata as m, sys; sys.exit(0 if any(e.value.startswith('servingbench') for e in m.entry_points(group='pytest11')) else 1)" && PLUGIN=()
timeout "${1:-300}" python3 -m pytest perf/test_lab_load.py -k vllm --gpu "${PLUGIN[@]}" -p no:cacheprovider \
  --report --results-dir /root/g/perf -o addopts="-ra" > /root/g/perf.log 2>&1
echo "pytest rc $? +$(( $(date +%s) - T0 ))s"
tail -25 /root/g/perf.log | cut -c1-250
grep -A6 "Energy over each" /root/g/perf/report/report.md 2>/dev/null | cut -c1-300
tar czf "$OUT/energy.tgz" --exclude='*.png' -C /root/g perf perf.log install.log 2>/dev/null; ls -la "$OUT"
