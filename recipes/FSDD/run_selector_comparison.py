#!/usr/bin/env python3
"""Input-conditioned layer dropping on FSDD digits, one command: backbone, selector, comparison.

1. Backbone: a finished run in results/fsdd/<backbone> is reused; otherwise recipes/FSDD/train.py trains one
   into <experiment_root>/<backbone> (RDsc by default, with a CPU-sized schedule, see --backbone_overrides;
   an interrupted run resumes from its checkpoints).
2. Selector: hparams/fsdd/selector.yaml (frozen backbone, budget k drawn per utterance from 1..N).
3. Comparison at every budget k = 1..N on the test set: selector vs random layers (several seeds) vs the
   best fixed pattern (exhaustive search on the validation set) vs early exit (first k) vs the even
   policy; selector parameters and latency (grouped and masked execution); layer-usage heat map.
Outputs in <experiment_root>/: comparison.md/.csv, wer_vs_k.png, layer_usage.png, latency.csv,
fixed_patterns_valid.csv, layer_usage.csv.

Usage: python recipes/FSDD/run_selector_comparison.py [--backbone rdsc|dld] [-- selector.yaml overrides]
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes" / "FSDD"))

import speechbrain as sb  # noqa: E402

from dld_brain.dataio import make_asr_datasets  # noqa: E402
from dld_brain.recipe import build_tokenizer, fit, main_guard, setup_experiment  # noqa: E402
from dld_brain.selector_brain import SelectorCTCBrain  # noqa: E402
from dld_brain.selector_eval import (  # noqa: E402
    cache_frontend, compare_at_budgets, measure_selector_latency, write_outputs,
)
from dld_brain.teacher import TeacherError, find_checkpoint  # noqa: E402
from train import prepare  # noqa: E402

#: CPU-sized backbone schedules (the shared 2-core machine): RDsc from scratch; DLD = teacher then DLD.
BACKBONE_OVERRIDES = {
    "rdsc": "--number_of_epochs=12 --valid_depths=[3] --sweep_depths=[1,3,6]",
    "dld": "--valid_depths=[3] --sweep_depths=[1,3,6]",
}


def finished(run: Path) -> bool:
    """A backbone run that trained and was evaluated (checkpoint + depth sweep present)."""
    if not (run / "depth_sweep_test.csv").is_file():
        return False
    try:
        find_checkpoint(run)
    except TeacherError:
        return False
    return True


def train_backbone(method: str, root: Path, overrides: str) -> None:
    """Run recipes/FSDD/train.py for the backbone (and, for DLD, its teacher first)."""
    for step in (["teacher", "dld"] if method == "dld" else [method]):
        if finished(root / step):
            continue
        cmd = [sys.executable, str(ROOT / "recipes" / "FSDD" / "train.py"), str(ROOT / "hparams" / "fsdd" / f"{step}.yaml"),
               f"--experiment_root={root}", *shlex.split(overrides if step == method else "")]
        print("backbone:", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"backbone training ({step}) failed; rerun to resume from its checkpoints")


def find_backbone(args) -> tuple[Path, Path]:
    """(backbone run folder, its prep folder): given, reused from results/fsdd, or trained here."""
    if args.backbone_folder:
        run = Path(args.backbone_folder)
        find_checkpoint(run)  # clear error if it holds no checkpoint
        return run, run.parent / "prepared"
    shared = ROOT / "results" / "fsdd" / args.backbone
    if finished(shared):
        print(f"backbone: reusing the finished run {shared}", flush=True)
        return shared, shared.parent / "prepared"
    root = Path(args.experiment_root)
    train_backbone(args.backbone, root, args.backbone_overrides)
    return root / args.backbone, root / "prepared"


def run(args, extra) -> None:
    start = time.time()
    backbone, prep = find_backbone(args)
    t_backbone = time.time() - start
    hparams_file = ROOT / "hparams" / "fsdd" / "selector.yaml"
    argv = [str(hparams_file), f"--experiment_root={args.experiment_root}", f"--backbone_checkpoint={backbone}",
            f"--prep_folder={prep}", *extra]
    hparams, run_opts, _ = setup_experiment(argv)
    sb.utils.distributed.run_on_main(prepare, kwargs={"hparams": hparams})
    tokenizer = build_tokenizer(hparams)
    hparams["tokenizer"] = tokenizer
    datasets = make_asr_datasets(hparams, tokenizer)
    brain = SelectorCTCBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                             run_opts=run_opts, checkpointer=hparams["checkpointer"])
    t0 = time.time()
    fit(brain, datasets, hparams)
    t_selector = time.time() - t0
    t0 = time.time()
    brain.on_evaluate_start(min_key="WER")  # best selector checkpoint (mean validation WER over budgets)
    brain.modules.eval()
    selective = brain.selective
    cached_valid = cache_frontend(brain, datasets["valid"])
    cached_test = cache_frontend(brain, datasets["test"])
    seeds = list(range(args.random_seeds))
    table, patterns, usage = compare_at_budgets(brain, selective, cached_valid, cached_test, seeds)
    t_eval = time.time() - t0
    best = {int(r["k"]): [int(i) for i in r["best fixed layers"].split()] for _, r in table.iterrows()}
    latency = measure_selector_latency(brain, selective, datasets["test"], best, repeats=args.latency_repeats)
    n_sel = brain.modules.selector.num_parameters()
    n_backbone = sum(p.numel() for p in brain.model.parameters())
    n_layer = sum(p.numel() for p in brain.model.encoder.layers[0].parameters())
    wall = time.time() - start
    header = (
        f"Backbone: `{backbone}` ({n_backbone / 1e6:.2f} M parameters, {brain.model.encoder.num_layers} layers of "
        f"{n_layer / 1e6:.3f} M), frozen: {brain.freeze_backbone}. Selector: {n_sel:,} parameters "
        f"({100 * n_sel / n_backbone:.2f} % of the backbone, {100 * n_sel / n_layer:.1f} % of one layer), "
        f"relaxation {selective.relaxation}, budget_weight {brain.budget_weight}, "
        f"{hparams['number_of_epochs']} epochs. Random = {len(seeds)} seeds (mean and sd); best fixed = lowest "
        f"validation WER among all C(N,k) patterns; test = {sum(len(c.ids) for c in cached_test)} utterances, "
        f"valid = {sum(len(c.ids) for c in cached_valid)}.\n\n"
        f"Wall time: {wall:.0f} s (backbone {t_backbone:.0f} s, selector training {t_selector:.0f} s, "
        f"comparison {t_eval:.0f} s, latency {wall - t_backbone - t_selector - t_eval:.0f} s).")
    md = write_outputs(Path(args.experiment_root), table, patterns, usage, latency, header)
    (Path(args.experiment_root) / "summary.json").write_text(json.dumps({
        "backbone": str(backbone), "selector_params": n_sel, "backbone_params": n_backbone,
        "wall_s": round(wall), "backbone_s": round(t_backbone), "selector_train_s": round(t_selector),
        "comparison_s": round(t_eval)}, indent=1))
    print(md.read_text())
    print(f"outputs in {args.experiment_root}/ (comparison.md, wer_vs_k.png, layer_usage.png)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment_root", default="results/fsdd_selector")
    parser.add_argument("--backbone", default="rdsc", choices=sorted(BACKBONE_OVERRIDES))
    parser.add_argument("--backbone_folder", default=None, help="a trained backbone run to use as is")
    parser.add_argument("--backbone_overrides", default=None,
                        help="train.py options for a backbone trained here (default: a CPU-sized schedule)")
    parser.add_argument("--random_seeds", type=int, default=3)
    parser.add_argument("--latency_repeats", type=int, default=7)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: selector.yaml overrides")
    args = parser.parse_args()
    if args.backbone_overrides is None:
        args.backbone_overrides = BACKBONE_OVERRIDES[args.backbone]
    if args.random_seeds < 1:
        sys.exit(f"error: --random_seeds must be >= 1, got {args.random_seeds}")
    main_guard(lambda: run(args, [a for a in args.extra if a != "--"]))


if __name__ == "__main__":
    main()
