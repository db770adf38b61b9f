"""Run several FSDD-style methods one after another (each a ``train.py`` run with its hparams file, so any
run can be repeated or resumed alone), then write their depth-sweep comparison; shared by the comparison
scripts in ``recipes/``."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

from dld_brain.report import write_comparison


@dataclass
class Job:
    """One command to run: ``name`` (unique, for messages and ``after``), the command line (or a function
    to run in a forked copy of this process, which saves a new interpreter's imports), the log file it
    writes (None = this terminal) and the names of jobs that must have finished before it starts."""

    name: str
    cmd: Union[Sequence[str], Callable[[], object]]
    log: Optional[Path] = None
    after: Sequence[str] = field(default_factory=tuple)


def _forked(fn: Callable[[], object], log: Optional[str]) -> None:
    """Body of a forked job: output to ``log`` (file descriptors too, for C libraries), exit status from
    ``fn`` (0, a SystemExit code, or 1 with the traceback logged)."""
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
    code = 0
    try:
        fn()
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        if not isinstance(err.code, int) and err.code is not None:
            print(err.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - everything must end in an exit status
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    os._exit(code)


class _ForkedProcess:
    """A forked job with the ``poll`` / ``returncode`` of :class:`subprocess.Popen`."""

    def __init__(self, fn: Callable[[], object], log: Optional[Path]):
        self.process = multiprocessing.get_context("fork").Process(
            target=_forked, args=(fn, None if log is None else str(log)))
        sys.stdout.flush()
        sys.stderr.flush()
        self.process.start()

    def poll(self) -> Optional[int]:
        return None if self.process.is_alive() else self.process.exitcode

    @property
    def returncode(self) -> Optional[int]:
        return self.process.exitcode


def run_jobs(job_list: Sequence[Job], jobs: int = 1, on_done: Optional[Callable[[Job, float], None]] = None,
             fail_fast: bool = True) -> dict[str, float]:
    """Run the commands, at most ``jobs`` at a time, each as soon as a slot is free and the jobs it needs
    (``after``) have finished, in list order otherwise; ``on_done(job, seconds)`` is called after each
    success. Returns the wall seconds of each job that ran.

    A failure stops new starts (``fail_fast``) or only the jobs that need the failed one; after the running
    ones have finished the process exits with a message naming the failed jobs.
    """
    names = [job.name for job in job_list]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    unknown = sorted({need for job in job_list for need in job.after if need not in names})
    if unknown:
        raise ValueError(f"jobs wait for unknown jobs {unknown}")
    start = time.time()
    seconds: dict[str, float] = {}
    pending, running, failed = list(job_list), [], []
    done: set[str] = set()
    count = 0
    while pending or running:
        blocked = {job.name for job in pending if any(need in failed for need in job.after)}
        pending = [job for job in pending if job.name not in blocked]
        failed += sorted(blocked)
        ready = [job for job in pending if all(need in done for need in job.after)]
        while ready and len(running) < max(int(jobs), 1) and not (failed and fail_fast):
            job = ready.pop(0)
            pending.remove(job)
            count += 1
            print(f"\n=== [{count}/{len(job_list)}] {job.name} ({time.time() - start:.0f} s elapsed) ===",
                  flush=True)
            log = None
            if job.log is not None:
                Path(job.log).parent.mkdir(parents=True, exist_ok=True)
            if callable(job.cmd):
                proc = _ForkedProcess(job.cmd, job.log)
            else:
                log = open(job.log, "w") if job.log is not None else None
                proc = subprocess.Popen(list(job.cmd), stdout=log, stderr=subprocess.STDOUT if log else None)
            running.append((job, proc, time.time(), log))
        if not running:
            break  # nothing can start: the rest waits for failed jobs
        time.sleep(0.05)
        for entry in [r for r in running if r[1].poll() is not None]:
            job, proc, t0, log = entry
            running.remove(entry)
            seconds[job.name] = time.time() - t0
            if log is not None:
                log.close()
            if proc.returncode != 0:
                where = f" (log: {job.log})" if job.log else ""
                print(f"{job.name} failed (exit {proc.returncode}){where}", flush=True)
                failed.append(job.name)
            else:
                done.add(job.name)
                if on_done is not None:
                    on_done(job, seconds[job.name])
    if failed:
        sys.exit(f"{', '.join(failed)} failed or could not run; fix it and rerun: finished runs are reused and "
                 "unfinished ones resume from their checkpoints")
    return seconds


def run_methods(train_script: str | Path, hparams_dir: str | Path, methods: Sequence[str], experiment_root: str,
                extra: Sequence[str] = (), skip_done: Sequence[str] = (), jobs: int = 1,
                after: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, float]:
    """Run ``train_script <hparams_dir>/<method>.yaml --experiment_root=...`` for each method (``jobs`` at a
    time, started in order; logs of parallel runs go to ``<experiment_root>/<method>.log``). ``after`` maps a
    method to those it needs finished first (e.g. ``{"dld": ["teacher"]}``: DLD reads the teacher's
    checkpoint); methods in ``skip_done`` whose depth sweep already exists are reused. Returns the wall
    seconds of each run (0 when reused); exits with a message naming the method when a run fails."""
    seconds: dict[str, float] = {}
    todo = []
    for method in methods:
        if method in skip_done and (Path(experiment_root) / method / "depth_sweep_test.csv").is_file():
            print(f"\n=== {method}: found in {experiment_root}/{method}, reused ===", flush=True)
            seconds[method] = 0.0
        else:
            todo.append(method)
    after = after or {}
    job_list = [Job(method, [sys.executable, str(train_script), str(Path(hparams_dir) / f"{method}.yaml"),
                             f"--experiment_root={experiment_root}", *extra],
                    log=Path(experiment_root) / f"{method}.log" if jobs > 1 else None,
                    after=[m for m in after.get(method, ()) if m in todo])
                for method in todo]
    seconds.update(run_jobs(job_list, jobs))
    return seconds


def compare(experiment_root: str | Path, methods: Sequence[str], name: str = "comparison",
            metric: str = "WER", extra_sets: Sequence[str] = ()) -> Path:
    """Write ``<name>.md/.csv/_<set>.png`` of ``metric`` from the methods' ``depth_sweep_test.csv``, plus the
    ``depth_sweep_<set>.csv`` of each of ``extra_sets`` that every method has (e.g. FSDD's ``test_isolated``);
    returns the .md path."""
    root = Path(experiment_root)
    sweeps = [root / m / "depth_sweep_test.csv" for m in methods]
    for test_set in extra_sets:
        found = [root / m / f"depth_sweep_{test_set}.csv" for m in methods]
        if all(path.is_file() for path in found):
            sweeps += found
    return write_comparison(sweeps, experiment_root, name=name, metric=metric)
