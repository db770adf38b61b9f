#!/usr/bin/env python3
"""The main job: train the static teacher, then RDsc, RDLD and DLD on FSDD digits, and compare them.

Each method is one run of recipes/FSDD/train.py with its hparams file (so any run can be repeated or
resumed alone); the comparison table (WER per depth) and plot land in <experiment_root>/.
Usage: python recipes/FSDD/run_comparison.py [--methods teacher rdsc rdld dld] [-- extra overrides]
       python recipes/FSDD/run_comparison.py --family wavlm   # WavLM from scratch: teacher, rdsc, dld
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dld_brain.comparison import compare, run_methods  # noqa: E402

METHODS = ("teacher", "rdsc", "rdld", "dld")
#: model family -> (hparams folder, default experiment root, default methods)
FAMILIES = {
    "conformer": ("fsdd", "results/fsdd", list(METHODS)),
    "wavlm": ("fsdd_wavlm", "results/fsdd_wavlm", ["teacher", "rdsc", "dld"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="conformer",
                        help="model family: sets the defaults of --hparams_dir, --experiment_root and --methods")
    parser.add_argument("--methods", nargs="+", choices=METHODS)
    parser.add_argument("--experiment_root")
    parser.add_argument("--hparams_dir")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: options passed to every train.py run, e.g. -- --number_of_epochs=2")
    args = parser.parse_args()
    folder, root, methods = FAMILIES[args.family]
    args.methods = args.methods or methods
    args.experiment_root = args.experiment_root or root
    args.hparams_dir = args.hparams_dir or str(ROOT / "hparams" / folder)
    extra = [a for a in args.extra if a != "--"]
    start = time.time()
    run_methods(ROOT / "recipes" / "FSDD" / "train.py", args.hparams_dir, args.methods, args.experiment_root, extra)
    md = compare(args.experiment_root, args.methods, extra_sets=["test_isolated"])  # isolated_test > 0
    print(f"\n=== done in {time.time() - start:.0f} s ===\n")
    print(md.read_text())
    print(f"table: {md}\nplot:  {Path(args.experiment_root) / 'comparison_test.png'}")


if __name__ == "__main__":
    main()
