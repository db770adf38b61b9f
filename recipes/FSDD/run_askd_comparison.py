#!/usr/bin/env python3
"""DLD vs DLD+ASKD per depth on FSDD digits: trains the static teacher if absent, then DLD and DLD+ASKD
(hparams/fsdd/dld.yaml, dld_askd.yaml), and writes <experiment_root>/askd_comparison.md (+ .csv, plot).

Usage: python recipes/FSDD/run_askd_comparison.py [--jobs 2] [-- extra train.py overrides]
A teacher (and, without extra overrides, a DLD run) already in <experiment_root> (e.g. from
scripts/main.sh) is reused. --jobs 2 trains DLD and DLD+ASKD at the same time (logs in <method>.log).
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dld_brain.comparison import compare, run_methods  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment_root", default="results/fsdd")
    parser.add_argument("--hparams_dir", default=str(ROOT / "hparams" / "fsdd"))
    parser.add_argument("--jobs", type=int, default=1, help="student runs trained at the same time")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: options passed to the student runs, e.g. -- --number_of_epochs=5")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    train = ROOT / "recipes" / "FSDD" / "train.py"
    start = time.time()
    seconds = run_methods(train, args.hparams_dir, ["teacher"], args.experiment_root, skip_done=["teacher"])
    seconds.update(run_methods(train, args.hparams_dir, ["dld", "dld_askd"], args.experiment_root, extra,
                               skip_done=[] if extra else ["dld"], jobs=args.jobs))
    md = compare(args.experiment_root, ["teacher", "dld", "dld_askd"], name="askd_comparison")
    total = time.time() - start
    lines = [f"| {m} | {s:.0f} |" for m, s in seconds.items()]
    md.write_text(md.read_text() + "\nWall time (s; 0 = reused): \n\n| run | seconds |\n| --- | --- |\n"
                  + "\n".join(lines) + f"\n| total | {total:.0f} |\n")
    print(f"\n=== done in {total:.0f} s ===\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
