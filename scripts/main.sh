#!/usr/bin/env bash
# Set up (if needed) and run the main job: teacher, RDsc, RDLD and DLD on FSDD connected digits (CPU),
# then the comparison table and plot in results/fsdd/. Extra arguments go to run_comparison.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python recipes/FSDD/run_comparison.py "$@"
