#!/usr/bin/env python3
"""The FSDD study: teacher, RDsc, RDLD and DLD on rotating speaker folds x seeds, aggregated into mean and
95 % CI per depth, paired significance tests and training cost vs quality (dld_brain.study, dld_brain.report).

Usage:
  python recipes/FSDD/run_study.py --folds 3 --seeds 3 --jobs 2 [--output results/study] [--export docs/study]
  python recipes/FSDD/run_study.py --aggregate-only --export docs/study     # re-aggregate committed CSVs
  python recipes/FSDD/run_study.py ... --only-folds 0 --only-seeds 1 -- --number_of_epochs=1   # a piece

Each run is one recipes/FSDD/train.py process (log: <output>/fold<k>/seed<s>/<method>.log). Resumable: a
rerun skips finished runs and resumes unfinished ones from their checkpoints. RDLD and DLD of seed s start
after the teacher of the same fold and seed. With --export, every finished run's small result files (CSV,
logs; no checkpoints) are copied to that folder and the report is aggregated from it, so pieces run on
several machines can be committed there and completed and re-aggregated later.
"""

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dld_brain import study  # noqa: E402
from dld_brain.comparison import Job, run_jobs  # noqa: E402
from dld_brain.recipe import main_guard  # noqa: E402
from dld_brain.report import write_study_report  # noqa: E402

TRAIN = ROOT / "recipes" / "FSDD" / "train.py"
HPARAMS = ROOT / "hparams" / "fsdd"

#: The study's training budget (see docs/study/README.md for the measurement behind it): the README's model
#: (6 layers, d_model 144) with fewer epochs, so 36 runs fit about 2 hours of 2 CPU cores.
STUDY_OVERRIDES = {
    "all": ["--train_digits=null", "--isolated_test=0"],  # 3-7 digit strings: the committed study's data
    "teacher": ["--number_of_epochs=10"],
    "rdsc": ["--number_of_epochs=15"],
    "rdld": ["--number_of_epochs=6"],
    "dld": ["--number_of_epochs=6"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3, help="number of rotating speaker folds (2..6; 3: 3 train "
                                                              "/ 1 valid / 2 test speakers, 6: 4 / 1 / 1)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..S per fold and method")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument("--output", default="results/study", help="where the runs train (checkpoints)")
    parser.add_argument("--export", help="copy finished runs' small result files here (e.g. docs/study) and "
                                         "aggregate from here")
    parser.add_argument("--aggregate-only", action="store_true", help="train nothing; aggregate the finished "
                                                                      "runs in --export (or --output)")
    parser.add_argument("--methods", nargs="+", choices=[*study.METHODS, *study.VARIANTS],
                        default=list(study.METHODS),
                        help="methods to run (default: the four); the variants of dld_brain.study.VARIANTS are "
                             "the settings the paper leaves open (issue 15 item 4)")
    parser.add_argument("--variants", action="store_true", help="add every variant of dld_brain.study.VARIANTS "
                                                                "to --methods (they reuse the teachers)")
    parser.add_argument("--only-folds", type=int, nargs="+", help="run only these folds (a piece of the study)")
    parser.add_argument("--only-seeds", type=int, nargs="+", help="run only these seeds")
    parser.add_argument("--data_folder", default=str(ROOT / "data" / "fsdd"))
    parser.add_argument("--bootstrap", type=int, default=10000, help="bootstrap replicates")
    parser.add_argument("--fork", action="store_true", help="start each run as a fork of this process instead "
                                                            "of a new interpreter (saves its imports: tests)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: overrides for every train.py run (they replace the study's budget)")
    args = parser.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    if args.variants:
        args.methods = list(dict.fromkeys([*args.methods, *study.VARIANTS]))
    return args


def run_overrides(args, run: study.Run) -> list:
    """train.py arguments of one run: fold, seed, shared prep folder, the study budget, then the extra
    overrides (a key given twice keeps its last value: train.py rejects duplicates)."""
    fold_root = Path(args.output) / f"fold{run.fold}"
    merged = {}
    for arg in [f"--experiment_root={fold_root / f'seed{run.seed}'}", f"--prep_folder={fold_root / 'prepared'}",
                f"--fold={run.fold}", f"--num_folds={args.folds}", f"--seed={run.seed}",
                f"--data_folder={args.data_folder}", *STUDY_OVERRIDES["all"],
                *STUDY_OVERRIDES[study.base_method(run.method)], *variant_overrides(run.method), *args.extra]:
        merged[arg.split("=", 1)[0]] = arg
    return list(merged.values())


def variant_overrides(method: str) -> list:
    """A variant's own settings and its run name (``--method``, which names its output folder)."""
    if method not in study.VARIANTS:
        return []
    return [*study.VARIANTS[method][1], f"--method={method}"]


def config(args) -> dict:
    """What makes runs comparable: folds, the budget and the extra overrides (not seeds or jobs)."""
    return {"folds": args.folds, "budget": STUDY_OVERRIDES, "extra": args.extra}


def recipe_module():
    """recipes/FSDD/train.py as a module (its preparation function; its __main__ block does not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsdd_recipe_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_this_process(argv: list) -> None:
    """What ``python recipes/FSDD/train.py ARGV`` does, in this (forked) process."""
    import torch

    from dld_brain.recipe import run_asr_recipe

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    module = recipe_module()
    main_guard(lambda: run_asr_recipe(argv, module.prepare, module.configure))


def prepare_folds(args, runs) -> None:
    """Prepare each fold's manifests and tokenizer once, before parallel runs could race on them."""
    import speechbrain as sb

    from dld_brain.hparams import load_hparams
    from dld_brain.recipe import build_tokenizer

    fsdd_train = recipe_module()  # the recipe's own preparation: train.py then finds it up to date

    for fold in sorted({r.fold for r in runs}):
        first = next(r for r in runs if r.fold == fold)
        hparams_file, _, overrides = sb.parse_arguments([str(HPARAMS / "teacher.yaml"),
                                                         *run_overrides(args, first)])
        hparams = load_hparams(hparams_file, overrides)
        fsdd_train.prepare(hparams)
        build_tokenizer(hparams)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    folds = args.only_folds if args.only_folds is not None else list(range(args.folds))
    seeds = args.only_seeds if args.only_seeds is not None else list(range(1, args.seeds + 1))
    bad = [f for f in folds if not 0 <= f < args.folds]
    if bad:
        sys.exit(f"error: --only-folds {bad} out of range 0..{args.folds - 1}")
    expected = study.study_runs(range(args.folds), range(1, args.seeds + 1), args.methods)
    source = Path(args.export or args.output)
    if not args.aggregate_only:
        study.check_config(args.output, config(args))
        if args.export:
            study.check_config(args.export, config(args))
        wanted = study.study_runs(folds, seeds, args.methods)
        todo = study.plan_runs(wanted, args.output, args.export)
        remade = [r for r in todo if args.export and study.is_finished(r.folder(args.export))]
        print(f"{len(wanted) - len(todo) + len(remade)} of {len(wanted)} runs already finished; {len(todo)} to "
              f"run ({args.jobs} at a time)" + (f", {len(remade)} of them exported teachers re-made for their "
                                                f"checkpoints" if remade else ""), flush=True)
        threads = os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
        print(f"OMP_NUM_THREADS={threads} (threads per run)", flush=True)
        if todo:
            prepare_folds(args, todo)
        names = {r.name for r in todo}

        def command(run: study.Run):
            argv = [str(HPARAMS / f"{study.base_method(run.method)}.yaml"), *run_overrides(args, run)]
            return functools.partial(run_in_this_process, argv) if args.fork else [sys.executable, str(TRAIN), *argv]

        jobs = [Job(r.name, command(r), log=r.folder(args.output).parent / f"{r.method}.log",
                    after=[r.teacher.name] if study.base_method(r.method) in study.NEEDS_TEACHER
                    and r.teacher.name in names else [])
                for r in todo]
        by_name = {r.name: r for r in todo}

        def finished(job: Job, seconds: float) -> None:
            run = by_name[job.name]
            (run.folder(args.output) / "run.json").write_text(json.dumps({
                "wall_s": round(seconds, 1), "jobs": args.jobs, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "command": ["train.py", *(job.cmd.args[0] if args.fork else job.cmd[2:])]}, indent=1))
            if not args.export:
                return
            if study.is_finished(run.folder(args.export)):  # a teacher re-made for its checkpoint: keep the export
                same = study.same_sweep(run.folder(args.output), run.folder(args.export))
                print(f"{run.name}: re-made teacher {'reproduces' if same else 'DIFFERS FROM'} the exported one"
                      + ("" if same else "; its students are paired with another teacher than the exported "
                                         "runs'"), flush=True)
                return
            study.export_run(run.folder(args.output), run.folder(args.export))

        run_jobs(jobs, args.jobs, on_done=finished)
        if args.export:  # runs finished by earlier invocations too
            for run in study.find_runs(args.output):
                if not study.is_finished(run.folder(args.export)):
                    study.export_run(run.folder(args.output), run.folder(args.export))
    md = write_study_report(source, source, expected=expected, n_boot=args.bootstrap)
    print(f"\n=== study aggregated from {source} in {time.time() - start:.0f} s ===\n")
    print(md.read_text())


def checked_main() -> None:
    """:func:`main` with study folder problems reported as one line."""
    try:
        main()
    except study.StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main_guard(checked_main)
