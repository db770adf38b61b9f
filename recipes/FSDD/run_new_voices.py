#!/usr/bin/env python3
"""New voices (issue 15 item 6): the default FSDD teacher vs hparams/fsdd/voices.yaml on leave-one-speaker-out
folds, each scored on its fold's test speaker (3-7 digit strings), on that speaker's isolated digits, and on a
probe of digit strings from Debian speech synthesisers (never trained on). See docs/new_voices.md.

Usage:
  python recipes/FSDD/run_new_voices.py --folds 0 1 --output results/new_voices
  python recipes/FSDD/run_new_voices.py --folds 0 1 --output results/new_voices --aggregate-only
  python recipes/FSDD/run_new_voices.py ... -- --number_of_epochs=2      # extra train.py overrides
  python recipes/FSDD/run_new_voices.py --folds 0 1 2 3 4 5 --configs default30 digits30 --aggregate-only \
      --include docs/new_voices/epochs30     # folds 3-5 trained here, 0-2 taken from the committed report
  python recipes/FSDD/run_new_voices.py --folds 0 1 2 3 4 5 --configs default30 digits30 --seeds 2 3 \
      --include docs/new_voices/six_folds    # seeds 2-3 trained here; the report aggregates seeds 1-3

Each run is one ``recipes/FSDD/train.py`` process (log: <output>/<config>/fold<k>.log) with
``--fold=k --num_folds=6`` (4 train / 1 valid / 1 test speakers), ``--seed=s`` (seed 1 in <output>/<config>/fold<k>,
seed s > 1 in <output>/<config>/fold<k>/seed<s>) and the budget in BUDGET; a finished run
(its sweep on the probe exists) is skipped, an unfinished one resumes from its checkpoints. Writes
``<output>/new_voices.csv`` / ``.md`` (WER and WER_beam at full depth per config, fold and set, means over the
folds) and ``tts_by_voice.csv`` (the probe per voice and per string kind).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from itertools import product
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dld_brain.data.tts_probe import write_tts_probe  # noqa: E402
from dld_brain.new_voices import (TIMING_COLUMNS, collect_probe_groups, collect_voice_runs,  # noqa: E402
                                  merge_committed, read_timing, run_folder, voices_markdown)

TRAIN = ROOT / "recipes" / "FSDD" / "train.py"
HP = ROOT / "hparams" / "fsdd"
#: name -> (hparams file, its overrides). ``default``: the study's teacher; ``digits``: the same trained on 1-7
#: digit strings (isolated digits included), no other change; ``voices``: hparams/fsdd/voices.yaml (1-7 digits
#: plus speaker / channel augmentation); ``mild30``: voices_mild.yaml (half the batches, at most 2 effects, no
#: clipping, milder noise and speeds). ``...30``: 30 epochs instead of 10. Pairs at equal epochs isolate one
#: change each: ``digits30 - default30`` the 1-7 digit strings, ``voices30 / mild30 - digits30`` the augmentation.
CONFIGS = {"default": (HP / "teacher.yaml", ["--train_digits=null"]),  # 3-7 digit strings, whatever base.yaml says
           "default30": (HP / "teacher.yaml", ["--train_digits=null", "--number_of_epochs=30"]),
           "digits": (HP / "teacher.yaml", ["--train_digits=[1, 7]"]),
           "digits30": (HP / "teacher.yaml", ["--train_digits=[1, 7]", "--number_of_epochs=30"]),
           "voices": (HP / "voices.yaml", []),
           "voices30": (HP / "voices.yaml", ["--number_of_epochs=30"]),
           "mild30": (HP / "voices_mild.yaml", ["--number_of_epochs=30"])}
#: The study's teacher budget (recipes/FSDD/run_study.py, docs/study): the README's model (6 layers, d_model 144)
#: for 10 epochs unless the config says otherwise, scored at full depth only (the teacher is static). About
#: 6 CPU min a 10-epoch run.
BUDGET = ["--sweep_depths=[6]", "--isolated_test=10", "--download=False", "--device=cpu"]
EPOCHS = 10


def run_args(args, config: str, fold: int, probe: Path, seed: int = 1) -> list[str]:
    """The train.py command line of ``config`` on LOSO fold ``fold`` with ``seed``; each key given once (the
    config's overrides replace the budget's, the user's extra overrides replace both)."""
    root = run_folder(args.output, config, fold, seed=seed).parent
    hparams, overrides = CONFIGS[config]
    merged: dict[str, str] = {}
    for arg in [f"--number_of_epochs={EPOCHS}", *BUDGET, *overrides, *args.extra]:
        merged[arg.split("=", 1)[0]] = arg
    return [str(hparams), f"--experiment_root={root}", f"--fold={fold}", "--num_folds=6",
            f"--data_folder={args.data_folder}", f"--extra_test_csvs={{tts: {probe.resolve()}}}",
            f"--seed={seed}", *merged.values()]


def report(args, probe: Path) -> None:
    out = Path(args.output)
    runs = collect_voice_runs(out, args.configs, args.folds, seeds=args.seeds)
    groups = collect_probe_groups(out, args.configs, args.folds, probe, seeds=args.seeds)
    timing = read_timing(out / "timing.csv") if (out / "timing.csv").is_file() else None
    for folder in args.include:  # earlier pieces of the same study (any seeds), e.g. committed under docs/
        runs, groups, timing = merge_committed(folder, runs, groups, timing, args.configs, args.folds)
    if runs.empty:
        print("no finished runs yet")
        return
    runs.to_csv(out / "new_voices.csv", index=False)
    if not groups.empty:
        groups.to_csv(out / "tts_by_voice.csv", index=False)
    if timing is not None and not timing.empty and args.include:
        timing[TIMING_COLUMNS].to_csv(out / "timing_all.csv", index=False, header=False)  # = timing.csv's format
    others = [c for c in args.configs if c != "default"]
    # one change at a time at equal epochs: the augmentation (voices vs digits), the 1-7 digit strings
    pairs = [(v, d) for v, d in (("voices", "digits"), ("voices30", "digits30"), ("mild30", "digits30"),
                                 ("digits30", "default30")) if v in args.configs and d in args.configs]
    text = f"# New voices: default FSDD teacher vs {', '.join(others)}\n\n" + voices_markdown(
        runs, groups, a=others, timing=timing, pairs=pairs)
    (out / "new_voices.md").write_text(text)
    print(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1], help="leave-one-speaker-out folds (0-5)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default", "voices"],
                        help="configurations to train and compare with default (CONFIGS)")
    parser.add_argument("--output", default="results/new_voices")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[1], dest="seeds",
                        help="training seeds per config and fold (statistics pair runs by fold and seed)")
    parser.add_argument("--data_folder", default=str(ROOT.parent / "shared" / "data" / "fsdd"))
    parser.add_argument("--per-voice", type=int, default=12, dest="per_voice",
                        help="probe strings of 2-7 digits per voice (plus the ten isolated digits)")
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--include", nargs="+", default=[], metavar="DIR",
                        help="folders of earlier reports (new_voices.csv, tts_by_voice.csv, timing.csv, e.g. "
                             "docs/new_voices/epochs30) whose runs (every seed) join this one's; a run in both "
                             "is taken from here")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: overrides for every train.py run")
    args = parser.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    probe = write_tts_probe(out / "tts_probe", per_voice=args.per_voice)
    if not args.aggregate_only:
        for seed, fold, config in product(args.seeds, args.folds, args.configs):
            if (run_folder(args.output, config, fold, seed=seed) / "depth_sweep_tts.csv").is_file():
                continue
            log = out / config / (f"fold{fold}.log" if seed == 1 else f"fold{fold}_seed{seed}.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            start, cpu0 = time.time(), os.times()
            with open(log, "a") as handle:
                code = subprocess.call([sys.executable, str(TRAIN), *run_args(args, config, fold, probe, seed)],
                                       stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
            cpu1 = os.times()
            cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
            with open(out / "timing.csv", "a") as handle:
                handle.write(f"{config},{fold},{code},{time.time() - start:.1f},{cpu:.1f},{seed}\n")
            print(f"{config} fold {fold} seed {seed}: exit {code}, {time.time() - start:.0f} s wall, "
                  f"{cpu:.0f} CPU s", flush=True)
            if code:
                return code
    report(args, probe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
