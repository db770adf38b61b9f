"""benchmarks/train_step.py at the paper's batch size (seconds of audio per GPU), in its small CPU form."""

import re
import subprocess
import sys
from types import SimpleNamespace

from conftest import REPO

from benchmarks.train_step import batch_size_for, largest_fitting_batch


def test_batch_seconds_gives_the_number_of_utterances():
    assert batch_size_for(SimpleNamespace(batch_seconds=600.0, seconds=35.0, batch=4)) == 17
    assert batch_size_for(SimpleNamespace(batch_seconds=None, seconds=35.0, batch=4)) == 4
    assert batch_size_for(SimpleNamespace(batch_seconds=10.0, seconds=35.0, batch=4)) == 1


def test_largest_fitting_batch_extrapolates_the_peak_linearly():
    # peak = 1000 + 100 n MiB: 17 -> 2700, 8 -> 1800; a 40 GiB card minus 1.5 GiB holds n = 384
    assert largest_fitting_batch(17, 2700.0, 8, 1800.0, 38.5 * 1024) == 384
    assert largest_fitting_batch(17, 2700.0, 8, 1800.0, 900.0) == 0
    assert largest_fitting_batch(4, 500.0, 4, 500.0, 400.0) == 0


def test_train_step_at_batch_seconds_runs_small_on_cpu():
    """Static, RD and DLD rows with step time, and peak memory with sampled gates and with every layer kept."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--small", "--device", "cpu",
           "--batch_seconds", "4", "--seconds", "2", "--steps", "1", "--precision", "fp32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800)  # 6 processes
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "batch 2 x 2 s = 4 s of audio (--batch_seconds 4)" in out
    for variant in ("static", "rdsc/rdld", "dld"):
        row = re.search(rf"^\| fp32 \| {re.escape(variant)} \| (\d+) \| [\d.]+ \| (\d+) \| [\d.]+ \| (\d+) \| [\d.]+ \|$",
                        out, re.M)
        assert row, (variant, out)
    assert "memory: CPU peak RSS above the built models (ratios only)" in out


def test_fit_rows_use_the_all_layers_peak_of_two_batch_sizes(monkeypatch):
    """--fit_gib: per variant, the batch whose all-layers peak (reserved on a GPU) fits the card."""
    import benchmarks.train_step as ts

    asked = []

    def fake_child(args, variant, precision, batch, worst=False):
        asked.append((variant, batch, worst))
        return {"peak_mib": 0.0, "reserved_mib": 1000.0 + 100.0 * batch}

    monkeypatch.setattr(ts, "child_peak_memory", fake_child)
    args = SimpleNamespace(device="cuda", seconds=35.0, margin_gib=1.5)
    worst = {v: {"peak_mib": 0.0, "reserved_mib": 2700.0} for v in ts.VARIANTS}
    worst["dld"] = {"oom": True}
    rows = ts.fit_rows(args, "bf16", 17, worst, [40.0])
    assert rows[0] == ("bf16", "static", ["384 x 35 s = 13440 s"])
    assert rows[2] == ("bf16", "dld", ["(batch does not fit this device)"])
    assert asked == [("static", 8, True), ("rdsc/rdld", 8, True)]  # the half batch, every layer kept
