#!/usr/bin/env bash
# Device, in the repo copy, after the carry calls c1..c6: install vLLM, copy the repo aside, start job.sh detached,
# then poll (poll.sh MAX_S). Usage: bash .gpuwheels/job/launch.sh MAX_S [GATE_ROUNDS]
set -u
mkdir -p /root/vx /root/g && cp .gpuwheels/c7/* /root/vx/ || exit 1
ls /root/vx | wc -l
t=$(date +%s)
bash /root/vx/device_install.sh > /root/g/install.log 2>&1 || { tail -30 /root/g/install.log; exit 1; }
echo "install $(( $(date +%s) - t )) s: $(tail -1 /root/g/install.log)"
rm -rf /root/repo && mkdir -p /root/repo && tar -C . --exclude=./.gpuwheels -cf - . | tar -C /root/repo -xf - || exit 1
mkdir -p /root/job && cp .gpuwheels/job/*.sh /root/job/ && rm -rf /root/sbcache && cp -a .gpuwheels/job/sbcache /root/sbcache
export PYTHONPATH=/root/site SERVINGBENCH_CACHE=/root/sbcache
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
EXTRAS=${4:-perf,selftest} PLAN=${3:-full} GATE_ROUNDS=${2:-3} setsid nohup bash /root/job/job.sh > /root/g/job.log 2>&1 < /dev/null &
echo "job launched (pid $!) at $(date -u +%H:%M:%S)"
sleep 2
bash /root/job/poll.sh "${1:-450}"
