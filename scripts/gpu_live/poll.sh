#!/usr/bin/env bash
# Device: wait up to MAX_S for /root/g/done, printing progress each minute; then copy /root/g into $OUT.
# poll.sh MAX_S [final]: with "final", a job still running is stopped first (its servers' process groups too).
G=${G:-/root/g}; max=${1:-450}; t=0
while [ ! -f "$G/done" ] && [ "$t" -lt "$max" ]; do
  sleep 5; t=$((t + 5))
  [ $((t % 60)) -eq 0 ] && echo "--- poll +${t}s $(date -u +%H:%M:%S): $(tail -1 "$G/job.log" 2>/dev/null | cut -c1-150)"
done
if [ "${2:-}" = final ] && [ ! -f "$G/done" ]; then
  echo "final poll: job not done, stopping it and its servers"
  for n in job A B Be B2; do p=$(cat "$G/$n.pid" 2>/dev/null) && kill -TERM -- "-$p" 2>/dev/null; done
  sleep 8
  for n in job A B Be B2; do p=$(cat "$G/$n.pid" 2>/dev/null) && kill -KILL -- "-$p" 2>/dev/null; done
  echo "stopped by the final poll at $(date -u +%H:%M:%S)" >> "$G/job.log"
fi
echo "=== job.log"; cut -c1-220 "$G/job.log" | tail -40
for n in stored stored2 slow1 aa1 slow2 aa2; do
  [ -f "$G/$n.log" ] || continue
  echo "=== $n"; sed -n '/servingbench regression gate/,/verdicts:/p' "$G/$n.log" | cut -c1-96 | grep -v "^---"
  grep -E "passed|failed|error" "$G/$n.log" | tail -1
done
[ -f "$G/perf.log" ] && { echo "=== perf"; grep -E "passed|failed" "$G/perf.log" | tail -3; }
[ -f "$G/perf-hf.log" ] && { echo "=== perf-hf"; grep -E "passed|failed|rror" "$G/perf-hf.log" | tail -3; }
[ -f "$G/calib.log" ] && { echo "=== calib"; tail -12 "$G/calib.log" | cut -c1-200; }
ls "$G"/selftest-*.log 2>/dev/null | while read f; do echo "=== $f"; tail -6 "$f"; done
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/g.tgz" --exclude='*/measurements' --exclude='*/.benchmarks' -C "$(dirname "$G")" "$(basename "$G")"
  (cd "$(dirname "$G")" && find "$(basename "$G")" -path '*/measurements' -type d | tar czf "$OUT/meas.tgz" -T -)
  s=$(stat -c %s "$OUT/meas.tgz")
  if [ "$s" -gt 15000000 ]; then split -b 15000000 -d "$OUT/meas.tgz" "$OUT/meas.tgz." && rm "$OUT/meas.tgz"; fi
  ls -la "$OUT"
fi
