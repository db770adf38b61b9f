#!/usr/bin/env bash
# Create .venv (if missing) and install dld-brain with its pinned requirements. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.dld_brain_installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing requirements (torch is large: a few minutes on a fresh machine)"
    python -m pip install -q --upgrade pip
    python -m pip install -q -r requirements.txt pytest
    python -m pip install -q --no-deps -e .
    touch "$stamp"
fi
echo "[setup] ready: $(python -c 'import torch, speechbrain; print("torch", torch.__version__, "speechbrain", speechbrain.__version__)')"
