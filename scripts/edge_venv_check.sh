#!/usr/bin/env bash
# Run the edge runner in a fresh virtual environment that has only numpy, soundfile and onnxruntime (no torch,
# no speechbrain): proof that a device needs nothing else. Not part of the test suite (needs PyPI access).
# Usage: bash scripts/edge_venv_check.sh EDGE_DIR a.wav [b.wav ...]   (EDGE_DIR from dld_brain.export --edge)
set -euo pipefail
edge=$1; shift
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$(mktemp -d)/edge-venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy soundfile onnxruntime
# only the dld_brain/edge package and dld_brain/__init__.py are put on the path, nothing else of the repo
site=$(mktemp -d)
mkdir -p "$site/dld_brain"
cp "$repo/dld_brain/__init__.py" "$site/dld_brain/"
cp -r "$repo/dld_brain/edge" "$site/dld_brain/"
PYTHONPATH="$site" "$venv/bin/python" -c "import torch" 2>/dev/null && { echo "torch is importable: not a clean venv"; exit 1; }
PYTHONPATH="$site" "$venv/bin/python" -m dld_brain.edge --model "$edge" "$@"
echo "packages in the venv: $("$venv/bin/pip" list --format=freeze | tr '\n' ' ')"
