#!/usr/bin/env python3
"""The main job: train the static teacher, then RD and DLD on the spoken coffee orders, and compare them.

Each method is one run of recipes/SpeechToIntent/train.py with its hparams file (so any run can be repeated
or resumed alone); the comparison table (accuracy per depth), the plot and the wall times land in
<experiment_root>/.
Usage: python recipes/SpeechToIntent/run_comparison.py [--methods teacher rd dld] [--num_threads 1] [--jobs 2]
       [-- extra overrides]
With --jobs 2 (the default) the teacher and RD train side by side (RD does not need the teacher) and DLD
starts when the teacher is done: on a 2-core CPU with one thread each, the whole run takes about the
teacher's time plus DLD's.
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

METHODS = ("teacher", "rd", "dld")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--experiment_root", default="results/speech_to_intent")
    parser.add_argument("--hparams_dir", default=str(ROOT / "hparams" / "slu"))
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads of every run (OMP_NUM_THREADS); default: the cores divided by --jobs "
                             "(torch's own choice with --jobs 1)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at a time (default 2: teacher and RD side by side; DLD waits for the teacher)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: options passed to every train.py run, e.g. -- --number_of_epochs=2")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    if args.num_threads is None and args.jobs > 1:  # parallel runs share the cores instead of fighting for them
        args.num_threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.num_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.num_threads)  # inherited by every train.py run
    start = time.time()
    times = run_methods(ROOT / "recipes" / "SpeechToIntent" / "train.py", args.hparams_dir, args.methods,
                        args.experiment_root, extra, jobs=args.jobs, after={"dld": ["teacher"]})
    total = round(time.time() - start, 1)
    md = compare(args.experiment_root, args.methods, metric="accuracy")
    times = {m: round(t, 1) for m, t in times.items()}
    timing = {"wall_time_s": {**times, "total": total}, "num_threads": args.num_threads, "jobs": args.jobs,
              "extra": extra}
    (Path(args.experiment_root) / "wall_time.json").write_text(json.dumps(timing, indent=1) + "\n")
    with open(md, "a") as handle:
        handle.write("\nWall time (training + depth sweep, s): "
                     + ", ".join(f"{m} {t}" for m, t in times.items()) + f"; total {total}\n")
    print(f"\n=== done in {total:.0f} s ===\n")
    print(md.read_text())
    print(f"table: {md}\nplot:  {Path(args.experiment_root) / 'comparison_test.png'}")


if __name__ == "__main__":
    main()
