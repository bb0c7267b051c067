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

# Stored baselines, one folder per hardware profile under baselines/ (README "Baselines"):
#   make baselines   record (or refresh) this machine's baseline; another profile: make baselines ARGS="--gpu"
#   make compare     compare with the latest baseline of this profile; fails on a regression beyond the default
#                    tolerance (servingbench/baselines.py DEFAULT_TOLERANCE; ARGS="--baseline-tolerance=median:5%").
#                    The whole perf suite with the same check: make compare BASELINE_TESTS=perf/
BASELINE_NAME ?= baseline
BASELINE_TESTS ?= perf/test_baselines.py

# Calibration on a quiet machine (README "Calibration"): rounds of the lab load in two server lifetimes, the
# rounds baseline with each metric's spread (baselines/<key>/rounds.json), and proposed [[expect]] rows for this
# hardware in perf/expected_performance.toml, to review and commit. GPU: make calibrate ARGS="--gpu"
.PHONY: calibrate
calibrate: setup
	$(PY) -m servingbench.cli calibrate $(ARGS)

.PHONY: baselines compare
baselines: setup
	$(PY) -m pytest perf/test_baselines.py --benchmark-save=$(BASELINE_NAME) $(ARGS)

compare: setup
	$(PY) -m pytest $(BASELINE_TESTS) --baseline-compare $(ARGS)

# The experiments (studies and the agreement with vllm bench serve), with the report: make studies ARGS="--gpu"
studies: setup
	$(PY) -m pytest perf/ --studies --report $(ARGS)
