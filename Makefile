# The two set-up commands of the README. Each installs what it needs first (scripts/bootstrap.sh, idempotent).
#   make perf   the main job: the perf suite on the embedded CPU default (real vLLM and HF servers)
#   make test   the tests of the suite itself (real HF and vLLM servers on 127.0.0.1)
# Extra pytest arguments: make perf ARGS="--gpu -k vllm"
PY := .venv/bin/python
ARGS ?=

.PHONY: setup perf test
setup:
	@bash scripts/bootstrap.sh

perf: setup
	$(PY) -m pytest perf/ $(ARGS)

test: setup
	$(PY) -m pytest tests/ $(ARGS)
