# The two set-up commands of the README. Each installs what it needs first (scripts/bootstrap.sh, idempotent).
#   make perf   the main job: the perf suite on the embedded CPU default (real vLLM and HF servers)
#   make test   the tests of the suite itself (real HF and vLLM servers on 127.0.0.1)
# Extra pytest arguments: make perf ARGS="--gpu -k vllm"
PY := .venv/bin/python
ARGS ?=

.PHONY: setup perf test studies
setup:
	@bash scripts/bootstrap.sh

perf: setup
	$(PY) -m pytest perf/ $(ARGS)

test: setup
	$(PY) -m pytest tests/ $(ARGS)

# Stored baselines, one folder per hardware key under baselines/ (README "Baselines and the regression gate"):
#   make calibrate   on a quiet machine: rounds.json (6 server lifetimes; spread between and within) and rows
#   make compare     the regression gate: N lifetimes x R rounds of the lab load, a verdict per metric
#                    (pytest perf/test_gate.py --gate); A/B in one session: make compare ARGS="--ab-config NAME"
#   make baselines   record pytest-benchmark's baseline of this machine (another profile: ARGS="--gpu")
#   make compare-benchmark   pytest-benchmark's own comparison, with its median tolerance
#                    (servingbench/plugin/options.py DEFAULT_TOLERANCE; ARGS="--baseline-tolerance=median:5%")
BASELINE_NAME ?= baseline
BASELINE_TESTS ?= perf/test_baselines.py

.PHONY: baselines calibrate compare compare-benchmark
calibrate: setup
	$(PY) -m servingbench.cli calibrate $(ARGS)

baselines: setup
	$(PY) -m pytest perf/test_baselines.py --benchmark-save=$(BASELINE_NAME) $(ARGS)

compare: setup
	$(PY) -m pytest perf/test_gate.py --gate $(ARGS)

compare-benchmark: setup
	$(PY) -m pytest $(BASELINE_TESTS) --baseline-compare $(ARGS)

# The experiments (studies and the agreement with vllm bench serve), with the report: make studies ARGS="--gpu"
studies: setup
	$(PY) -m pytest perf/ --studies --report $(ARGS)
