#!/usr/bin/env python3
"""Train the static teacher, then RD (from scratch), RDLD and DLD on the spoken coffee orders, and compare them.

Each method is one run of recipes/SpeechToIntent/train.py with its hparams file (so any run can be repeated
or resumed alone); the comparison table (accuracy per depth), the plot and the wall times land in
<experiment_root>/.
Usage: python recipes/SpeechToIntent/run_comparison.py [--methods teacher rd rdld dld] [--seeds 3]
       [--num_threads 1] [--jobs 2] [-- extra overrides]
With --jobs 2 (the default) the teacher and RD train side by side (RD does not need the teacher), then RDLD
and DLD, which start from it: on a 2-core CPU with one thread each, a seed takes about the teacher's time
plus DLD's. With --seeds S > 1, seed s runs in <experiment_root>/seed<s>/ (--seed=s; the data split is the
same for every seed) and <experiment_root>/summary.md gives the mean and a 95 % t-interval over seeds per
depth with paired t-tests (DLD - RDLD, DLD - RD, RDLD - RD). Rerunning resumes: finished runs are reused.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dld_brain.comparison import compare, run_methods  # noqa: E402
from dld_brain.report import write_seeds_report  # noqa: E402

METHODS = ("teacher", "rd", "rdld", "dld")
#: the comparisons of the seed summary: (a, b) reports accuracy(a) - accuracy(b); positive = a is better
PAIRS = (("dld", "rdld"), ("dld", "rd"), ("rdld", "rd"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--experiment_root", default="results/speech_to_intent")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds 1..S; with S > 1 each in <experiment_root>/seed<s>/ plus a summary over seeds")
    parser.add_argument("--hparams_dir", default=str(ROOT / "hparams" / "slu"))
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads of every run (OMP_NUM_THREADS); default: the cores divided by --jobs "
                             "(torch's own choice with --jobs 1)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at a time (default 2: teacher and RD side by side; RDLD/DLD wait for the teacher)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: options passed to every train.py run, e.g. -- --number_of_epochs=2")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    if args.num_threads is None and args.jobs > 1:  # parallel runs share the cores instead of fighting for them
        args.num_threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.num_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.num_threads)  # inherited by every train.py run
    start = time.time()
    roots = [args.experiment_root] if args.seeds == 1 else [
        str(Path(args.experiment_root) / f"seed{seed}") for seed in range(1, args.seeds + 1)]
    for seed, root in enumerate(roots, start=1):
        seed_args = [f"--seed={seed}"] if args.seeds > 1 else []
        run_one(args, root, [*seed_args, *extra], skip_done=args.methods if args.seeds > 1 else ())
    if args.seeds > 1:
        md = write_seeds_report(args.experiment_root, range(1, args.seeds + 1), args.methods, metric="accuracy",
                                pairs=PAIRS, title="# Spoken coffee orders: accuracy over seeds")
        with open(md, "a") as handle:
            handle.write(f"\nWall time of this invocation: {time.time() - start:.0f} s ({args.jobs} jobs, "
                         f"{args.num_threads or 'default'} threads each)\n")
        print(md.read_text())


def run_one(args, root: str, extra: list, skip_done=()) -> None:
    """One seed: every method of ``args.methods`` into ``root``, then its comparison table and wall times."""
    start = time.time()
    times = run_methods(ROOT / "recipes" / "SpeechToIntent" / "train.py", args.hparams_dir, args.methods,
                        root, extra, jobs=args.jobs, after={"dld": ["teacher"], "rdld": ["teacher"]},
                        skip_done=skip_done)
    total = round(time.time() - start, 1)
    md = compare(root, args.methods, metric="accuracy")
    times = {m: round(t, 1) for m, t in times.items()}
    timing = {"wall_time_s": {**times, "total": total}, "num_threads": args.num_threads, "jobs": args.jobs,
              "extra": extra}
    (Path(root) / "wall_time.json").write_text(json.dumps(timing, indent=1) + "\n")
    with open(md, "a") as handle:
        handle.write("\nWall time (training + depth sweep, s): "
                     + ", ".join(f"{m} {t}" for m, t in times.items()) + f"; total {total}\n")
    print(f"\n=== {root}: done in {total:.0f} s ===\n")
    print(md.read_text())
    print(f"table: {md}\nplot:  {Path(root) / 'comparison_test.png'}")


if __name__ == "__main__":
    main()
