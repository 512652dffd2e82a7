#!/usr/bin/env bash
# Create .venv and install the harness with its test dependencies.
# torch is pinned here (the project itself only asks for a range): on this kind of machine the pin
# resolves to a CPU build from local disk; on a GPU machine PyPI's default wheel is a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${HARNESS_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: $(.venv/bin/python -c 'import torch, harness; print(f"harness {harness.__version__}, torch {torch.__version__}")') in .venv"
