#!/usr/bin/env bash
# GPU checks for a CUDA machine (never part of CI): the CUDA test module (tests/test_cuda.py: GPU = CPU
# outputs at every depth, skipped layers uncomputed, bf16 finite, the FSDD recipe trained and swept on the
# GPU), then the training-step and encoder-latency benchmarks on the GPU in fp32 and bf16.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (DLD_SHARED_DATA: where fsdd/ is, default ../shared/data)
# Uses the python3 on PATH (its torch must see the GPU); the logs land in OUT_DIR (default results/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
python3 - <<'EOF' 2>&1 | tee "$out/machine.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(), "|",
      round(torch.cuda.get_device_properties(0).total_memory / 2**30), "GiB")
EOF
python3 -m pytest -q -rs tests/test_cuda.py 2>&1 | tee "$out/pytest_cuda.txt" || status=1
for precision in fp32 bf16; do
    python3 benchmarks/train_step.py --device cuda --precision "$precision" --steps 20 2>&1 \
        | tee "$out/train_step_$precision.txt" || status=1
done
# The paper's batch (max_batch_length: 600 s per GPU) in its worst bucket (17 x 35 s), and the batch that fits
# 40 GB and 80 GB cards (docs/gpu_check.md, "Memory at the paper's batch size")
python3 benchmarks/train_step.py --device cuda --batch_seconds 600 --seconds 35 --precision fp32 bf16 \
    --steps 10 --fit_gib 40 80 2>&1 | tee "$out/train_step_600s.txt" || status=1
python3 benchmarks/encoder_latency.py --device cuda --repeats 20 2>&1 | tee "$out/encoder_latency.txt" || status=1
python3 benchmarks/encoder_latency.py --device cuda --repeats 20 --batch 32 2>&1 \
    | tee "$out/encoder_latency_b32.txt" || status=1
exit $status
