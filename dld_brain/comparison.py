"""Run several FSDD-style methods one after another (each a ``train.py`` run with its hparams file, so any
run can be repeated or resumed alone), then write their depth-sweep comparison; shared by the comparison
scripts in ``recipes/``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from dld_brain.report import write_comparison


def run_methods(train_script: str | Path, hparams_dir: str | Path, methods: Sequence[str], experiment_root: str,
                extra: Sequence[str] = (), skip_done: Sequence[str] = (), jobs: int = 1,
                after: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, float]:
    """Run ``train_script <hparams_dir>/<method>.yaml --experiment_root=...`` for each method (``jobs`` at a
    time, started in order; logs of parallel runs go to ``<experiment_root>/<method>.log``). ``after`` maps a
    method to those it needs finished first (e.g. ``{"dld": ["teacher"]}``: DLD reads the teacher's
    checkpoint); methods in ``skip_done`` whose depth sweep already exists are reused. Returns the wall
    seconds of each run (0 when reused); exits with a message naming the method when a run fails."""
    start = time.time()
    seconds: dict[str, float] = {}
    todo = []
    for method in methods:
        if method in skip_done and (Path(experiment_root) / method / "depth_sweep_test.csv").is_file():
            print(f"\n=== {method}: found in {experiment_root}/{method}, reused ===", flush=True)
            seconds[method] = 0.0
        else:
            todo.append(method)
    running: list = []
    after = after or {}

    def wait_one(index: int = 0) -> None:
        method, proc, t0, log = running.pop(index)
        code = proc.wait()
        seconds[method] = time.time() - t0
        if log is not None:
            log.close()
        if code != 0:
            for _, other, _, _ in running:
                other.wait()
            sys.exit(f"{method} failed (exit {code}); fix it and rerun: finished runs resume from their checkpoints")

    for i, method in enumerate(todo, 1):
        for needed in after.get(method, ()):  # its inputs must be complete before it starts
            names = [r[0] for r in running]
            if needed in names:
                wait_one(names.index(needed))
        while len(running) >= max(int(jobs), 1):
            wait_one()
        print(f"\n=== [{i}/{len(todo)}] {method} ({time.time() - start:.0f} s elapsed) ===", flush=True)
        cmd = [sys.executable, str(train_script), str(Path(hparams_dir) / f"{method}.yaml"),
               f"--experiment_root={experiment_root}", *extra]
        log = None
        if jobs > 1:
            Path(experiment_root).mkdir(parents=True, exist_ok=True)
            log = open(Path(experiment_root) / f"{method}.log", "w")
        running.append((method, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None),
                        time.time(), log))
    while running:
        wait_one()
    return seconds


def compare(experiment_root: str | Path, methods: Sequence[str], name: str = "comparison",
            metric: str = "WER") -> Path:
    """Write ``<name>.md/.csv/_<set>.png`` of ``metric`` from the methods' ``depth_sweep_test.csv``; returns
    the .md path."""
    sweeps = [Path(experiment_root) / m / "depth_sweep_test.csv" for m in methods]
    return write_comparison(sweeps, experiment_root, name=name, metric=metric)
