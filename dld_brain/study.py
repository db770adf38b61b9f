"""The FSDD study: teacher, RDsc, RDLD and DLD over speaker folds x seeds, with confidence intervals, paired
significance tests and training cost against quality.

Layout of a study folder (the run output of ``recipes/FSDD/run_study.py``, or its exported copy under
``docs/study``): ``fold<k>/seed<s>/<method>/`` holds one run's ``depth_sweep_test.csv`` (WER per depth),
``epoch_log.csv`` (steps, wall seconds and validation WERs per epoch, written by the Brain) and either the
SpeechBrain ``wer_test_n<d>.txt`` files or their compact form ``utt_errors_test.csv`` (errors and words
of every test utterance at every depth). Everything here reads only those small files, so a study run in
pieces on several machines is aggregated from the exported CSVs alone.

Statistics:

- per depth and method, the mean WER over folds x seeds with a 95 % t-interval (:func:`t_interval`);
- paired bootstrap over test utterances (:func:`paired_bootstrap`): the WER difference between two methods
  on the same utterances, pooled over folds x seeds (the same fold and seed on both sides, so RDLD/DLD of
  seed s share the teacher of seed s); utterances are resampled within each fold, the same draw for every
  seed, so the interval reflects the finite test set and the seeds' spread alike;
- a run-level paired t-interval over the (fold, seed) differences (:func:`run_level_differences`);
- training cost (:func:`cost_answers`): cumulative wall time / steps until each method's validation WER
  reaches RDsc's final validation WER, the teacher's cost added to RDLD/DLD.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

METHODS = ("teacher", "rdsc", "rdld", "dld")
#: methods that start from (RDLD) or distil (DLD) the teacher of the same fold and seed
NEEDS_TEACHER = ("rdld", "dld")
#: the comparisons of the study: (a, b) reports WER(a) - WER(b); negative = a is better
PAIRS = (("dld", "rdld"), ("dld", "rdsc"), ("rdld", "rdsc"))
#: issue 15 item 4, the settings the paper leaves open: name -> (base method, train.py overrides). Each variant
#: is one more method of the study, run at the same folds and seeds with the base method's budget and its
#: teacher; its runs live in ``fold<k>/seed<s>/<name>/`` (the name is the run's ``method``). Defaults of the
#: base methods: KD temperature 1, kd_weight 1, teacher targets from the augmented features, drop_prob 0.5.
VARIANTS = {
    "dld_t2": ("dld", ("--kd_temperature=2.0",)),
    "dld_kd05": ("dld", ("--kd_weight=0.5",)),
    "dld_kd2": ("dld", ("--kd_weight=2.0",)),
    "dld_clean": ("dld", ("--kd_teacher_input=clean",)),
    "rdld_p03": ("rdld", ("--drop_prob=0.3",)),
    "dld_p03": ("dld", ("--drop_prob=0.3",)),
    "rdld_p07": ("rdld", ("--drop_prob=0.7",)),
    "dld_p07": ("dld", ("--drop_prob=0.7",)),
}
#: the comparisons a variant adds: against RDLD at the same drop probability, and against default DLD
VARIANT_PAIRS = {
    "dld_t2": (("dld_t2", "rdld"), ("dld_t2", "dld")),
    "dld_kd05": (("dld_kd05", "rdld"), ("dld_kd05", "dld")),
    "dld_kd2": (("dld_kd2", "rdld"), ("dld_kd2", "dld")),
    "dld_clean": (("dld_clean", "rdld"), ("dld_clean", "dld")),
    "dld_p03": (("dld_p03", "rdld_p03"),),
    "dld_p07": (("dld_p07", "rdld_p07"),),
}


def base_method(method: str) -> str:
    """The method a study method runs as: itself, or the base of a :data:`VARIANTS` entry."""
    return VARIANTS[method][0] if method in VARIANTS else method


def study_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The paired comparisons to report for the methods present: :data:`PAIRS`, then each variant's."""
    present = set(methods)
    pairs = list(PAIRS) + [pair for name in VARIANTS if name in present for pair in VARIANT_PAIRS.get(name, ())]
    return [(a, b) for a, b in pairs if a in present and b in present]


#: the files of one finished run that are exported (small CSV / text, no checkpoints)
RUN_FILES = ("depth_sweep_test.csv", "epoch_log.csv", "train_log.txt", "utt_errors_test.csv", "run.json")

_HEADER = re.compile(r"^(?P<id>\S+), %WER (?P<wer>[\d.]+|nan) \[ (?P<edits>\d+) / (?P<words>\d+), "
                     r"(?P<ins>\d+) ins, (?P<dels>\d+) del, (?P<subs>\d+) sub \]")
_RUN = re.compile(r"^fold(\d+)/seed(\d+)/([A-Za-z0-9_]+)$")


class StudyError(RuntimeError):
    """A study folder that cannot be aggregated (missing or inconsistent files); the message names it."""


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    fold: int
    seed: int
    method: str

    @property
    def name(self) -> str:
        return f"fold{self.fold}/seed{self.seed}/{self.method}"

    def folder(self, root: str | Path) -> Path:
        return Path(root) / f"fold{self.fold}" / f"seed{self.seed}" / self.method

    @property
    def teacher(self) -> "Run":
        return Run(self.fold, self.seed, "teacher")


def study_runs(folds: Iterable[int], seeds: Iterable[int], methods: Sequence[str] = METHODS) -> list[Run]:
    """Every (fold, seed, method), ordered so that teachers come first and slow runs start early."""
    folds, seeds = list(folds), list(seeds)
    order = sorted(methods, key=lambda m: (base_method(m) in NEEDS_TEACHER,
                                           METHODS.index(m) if m in METHODS else 99))
    return [Run(f, s, m) for m in order for f in folds for s in seeds]


def is_finished(folder: str | Path) -> bool:
    """A run is finished once its test depth sweep is written (the last step of ``train.py``)."""
    return (Path(folder) / "depth_sweep_test.csv").is_file()


def plan_runs(wanted: Sequence[Run], output: str | Path, export: Optional[str | Path] = None) -> list[Run]:
    """The runs to train for ``wanted``: those finished neither in ``output`` nor in ``export`` (runs from
    another machine, committed there), plus the teacher of every such run that distils or starts from one
    when that teacher's checkpoint is not in ``output`` (an exported teacher has no checkpoint: it is
    re-made, and :func:`same_sweep` tells whether it reproduced the exported one). Teachers come first."""
    def done(run: Run) -> bool:
        return is_finished(run.folder(output)) or (export is not None and is_finished(run.folder(export)))

    todo = [r for r in wanted if not done(r)]
    teachers = [r.teacher for r in todo if base_method(r.method) in NEEDS_TEACHER
                and not is_finished(r.teacher.folder(output))]
    return list(dict.fromkeys(teachers + todo))


def same_sweep(a: str | Path, b: str | Path, test_set: str = "test") -> bool:
    """Whether two finished runs' test depth sweeps give the same WER at every depth (a re-made teacher
    against the exported one: bit-exact training on the same kind of machine and thread count)."""
    cols = ["depth", "WER", "WER_beam"]
    left, right = (pd.read_csv(Path(f) / f"depth_sweep_{test_set}.csv") for f in (a, b))
    cols = [c for c in cols if c in left and c in right]
    return left[cols].reset_index(drop=True).equals(right[cols].reset_index(drop=True))


def find_runs(root: str | Path) -> list[Run]:
    """The finished runs under a study folder (``fold<k>/seed<s>/<method>/depth_sweep_test.csv``)."""
    root = Path(root)
    runs = []
    for sweep in sorted(root.glob("fold*/seed*/*/depth_sweep_test.csv")):
        match = _RUN.match(sweep.parent.relative_to(root).as_posix())
        if match:
            runs.append(Run(int(match[1]), int(match[2]), match[3]))
    return runs


# ------------------------------------------------------------------------------------ per-utterance errors
def parse_wer_details(path: str | Path) -> pd.DataFrame:
    """Per-utterance errors of a SpeechBrain ``wer_*.txt`` file: ``ID, errors, words, ins, dels, subs``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        match = _HEADER.match(line)
        if match:
            rows.append({"ID": match["id"], "errors": int(match["edits"]), "words": int(match["words"]),
                         "ins": int(match["ins"]), "dels": int(match["dels"]), "subs": int(match["subs"])})
    if not rows:
        raise StudyError(f"{path} holds no per-utterance WER lines (is it a SpeechBrain wer_<set>_n<k>.txt?)")
    return pd.DataFrame(rows)


def utterance_errors(folder: str | Path, test_set: str = "test") -> pd.DataFrame:
    """``depth, ID, errors, words`` of one run: from ``utt_errors_<set>.csv`` if present, else parsed from
    its ``wer_<set>_n<d>.txt`` files (the best checkpoint's sweep, no ``_ep``/``_avg`` tag)."""
    folder = Path(folder)
    compact = folder / f"utt_errors_{test_set}.csv"
    if compact.is_file():
        return pd.read_csv(compact)
    pattern = re.compile(rf"^wer_{re.escape(test_set)}_n(\d+)\.txt$")
    frames = []
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match:
            table = parse_wer_details(path)[["ID", "errors", "words"]]
            table.insert(0, "depth", int(match[1]))
            frames.append(table)
    if not frames:
        raise StudyError(f"no utt_errors_{test_set}.csv and no wer_{test_set}_n<k>.txt in {folder}")
    return pd.concat(frames, ignore_index=True).sort_values(["depth", "ID"], ignore_index=True)


def write_utterance_errors(folder: str | Path, test_set: str = "test") -> Path:
    """Write the compact ``utt_errors_<set>.csv`` of a run (from its wer files); returns its path."""
    path = Path(folder) / f"utt_errors_{test_set}.csv"
    utterance_errors(folder, test_set).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------- collecting
def _tagged(frame: pd.DataFrame, run: Run) -> pd.DataFrame:
    """``frame`` with leading ``fold, seed, method`` columns naming the run it came from."""
    frame = frame.drop(columns=["method"], errors="ignore")
    for column, value in (("method", run.method), ("seed", run.seed), ("fold", run.fold)):
        frame.insert(0, column, value)
    return frame


def collect_sweeps(root: str | Path, runs: Optional[Sequence[Run]] = None) -> pd.DataFrame:
    """Every finished run's depth sweep with ``fold, seed, method`` columns."""
    runs = find_runs(root) if runs is None else runs
    if not runs:
        raise StudyError(f"no finished study runs (fold<k>/seed<s>/<method>/depth_sweep_test.csv) in {root}")
    return pd.concat([_tagged(pd.read_csv(r.folder(root) / "depth_sweep_test.csv"), r) for r in runs],
                     ignore_index=True)


def collect_utterances(root: str | Path, runs: Optional[Sequence[Run]] = None,
                       test_set: str = "test") -> pd.DataFrame:
    """Every finished run's per-utterance errors: ``fold, seed, method, depth, ID, errors, words``."""
    runs = find_runs(root) if runs is None else runs
    return pd.concat([_tagged(utterance_errors(r.folder(root), test_set), r) for r in runs], ignore_index=True)


#: cost units: name -> cumulative column of an epoch log (wall seconds, CPU seconds, optimiser steps)
COST_UNITS = {"s": "cum_s", "cpu_s": "cum_cpu_s", "steps": "cum_steps"}


def load_epoch_log(folder: str | Path) -> pd.DataFrame:
    """A run's ``epoch_log.csv``, one row per epoch (the last one when a resumed run repeated an epoch),
    with cumulative ``cum_steps``, ``cum_train_s``, ``cum_s`` (training + validation wall seconds) and
    ``cum_cpu_s`` (the same in CPU seconds of the run's process; NaN in logs without CPU columns)."""
    path = Path(folder) / "epoch_log.csv"
    if not path.is_file():
        raise StudyError(f"{path} not found: the run predates epoch logging or did not train; rerun it")
    log = pd.read_csv(path).drop_duplicates("epoch", keep="last").sort_values("epoch", ignore_index=True)
    for column in ("train_cpu_s", "valid_cpu_s"):
        if column not in log:
            log[column] = math.nan
    log["cum_steps"] = log["steps"].cumsum()
    log["cum_train_s"] = log["train_s"].cumsum()
    log["cum_s"] = (log["train_s"] + log["valid_s"]).cumsum()
    log["cum_cpu_s"] = (log["train_cpu_s"] + log["valid_cpu_s"]).cumsum()
    return log


def collect_epoch_logs(root: str | Path, runs: Optional[Sequence[Run]] = None) -> pd.DataFrame:
    """Every finished run's epoch log (see :func:`load_epoch_log`) with ``fold, seed, method`` columns."""
    runs = find_runs(root) if runs is None else runs
    return pd.concat([_tagged(load_epoch_log(r.folder(root)), r) for r in runs], ignore_index=True)


# ------------------------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t confidence interval of the mean (NaN bounds for fewer than 2 values)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def depth_summary(sweeps: pd.DataFrame, metric: str = "WER", confidence: float = 0.95) -> pd.DataFrame:
    """Per test set, depth and method: runs ``n``, ``mean``, ``sd`` and the t-interval over folds x seeds,
    with the executed encoder parameters."""
    rows = []
    for (test_set, depth, method), group in sweeps.groupby(["test_set", "depth", "method"], sort=False):
        mean, low, high = t_interval(group[metric], confidence)
        rows.append({"test_set": test_set, "depth": int(depth), "method": method, "n": len(group),
                     "mean": mean, "sd": float(group[metric].std(ddof=1)) if len(group) > 1 else math.nan,
                     "ci_low": low, "ci_high": high, "encoder_params": int(group["encoder_params"].iloc[0])})
    order = {m: i for i, m in enumerate(dict.fromkeys(list(METHODS) + list(VARIANTS) + list(sweeps["method"])))}
    table = pd.DataFrame(rows)
    return table.sort_values(["test_set", "depth", "method"], key=lambda c: c.map(order) if c.name == "method"
                             else c, ignore_index=True)


def beam_effect(sweeps: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """What the recipe's beam search (and its lexicon) changes: per test set, depth and method, the mean
    ``WER_beam - WER`` (points; negative = beam search helps) over the runs with a t-interval, paired within
    each run. Empty when the sweeps have no ``WER_beam`` (greedy-only runs)."""
    if "WER_beam" not in sweeps.columns or not sweeps["WER_beam"].notna().any():
        return pd.DataFrame()
    paired = sweeps[sweeps["WER_beam"].notna()]
    return depth_summary(paired.assign(beam_minus_greedy=paired["WER_beam"] - paired["WER"]),
                         metric="beam_minus_greedy", confidence=confidence)


def _paired_table(utts: pd.DataFrame, a: str, b: str, depth: int) -> pd.DataFrame:
    """Rows ``fold, seed, ID, words, err_a, err_b`` for the utterances both methods decoded at ``depth``."""
    keys = ["fold", "seed", "ID"]
    at = utts[utts["depth"] == depth]
    left = at[at["method"] == a][keys + ["words", "errors"]].rename(columns={"errors": "err_a"})
    right = at[at["method"] == b][keys + ["errors"]].rename(columns={"errors": "err_b"})
    return left.merge(right, on=keys, how="inner")


def paired_bootstrap(utts: pd.DataFrame, a: str, b: str, depth: int, n_boot: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Paired bootstrap of ``WER(a) - WER(b)`` (percentage points) at ``depth`` over test utterances.

    Pairs are (fold, seed, utterance) decoded by both methods; the WER of a side is its errors summed over
    every pair divided by the words summed likewise (pooled over folds x seeds). Each replicate resamples
    the utterances of every fold with replacement and keeps all seeds of a drawn utterance. Returns
    ``diff``, ``ci_low``, ``ci_high`` (percentile interval) and the two-sided ``p_value`` of "no difference"
    (share of replicates at least as far from the observed difference as the observed difference is from
    0, the null distribution being the centred bootstrap distribution), with ``runs`` (fold x seed pairs),
    ``utterances`` and ``words``.
    """
    table = _paired_table(utts, a, b, depth)
    if table.empty:
        return {"a": a, "b": b, "depth": depth, "runs": 0, "utterances": 0, "words": 0, "diff": math.nan,
                "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    # per (fold, utterance): error difference and words summed over the seeds that have both methods
    per_utt = table.assign(delta=table["err_a"] - table["err_b"]).groupby(["fold", "ID"], sort=True)[
        ["delta", "words"]].sum()
    rng = np.random.default_rng(seed)
    delta_sum = np.zeros(n_boot)
    words_sum = np.zeros(n_boot)
    for _, group in per_utt.groupby(level="fold"):
        delta, words = group["delta"].to_numpy(float), group["words"].to_numpy(float)
        draws = rng.integers(0, len(group), size=(n_boot, len(group)))
        delta_sum += delta[draws].sum(axis=1)
        words_sum += words[draws].sum(axis=1)
    replicates = 100.0 * delta_sum / np.maximum(words_sum, 1.0)
    diff = 100.0 * per_utt["delta"].sum() / max(per_utt["words"].sum(), 1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    p_value = (1 + np.sum(np.abs(replicates - diff) >= abs(diff) - 1e-12)) / (n_boot + 1)
    return {"a": a, "b": b, "depth": int(depth), "runs": int(table[["fold", "seed"]].drop_duplicates().shape[0]),
            "utterances": int(len(per_utt)), "words": int(table["words"].sum()), "diff": float(diff),
            "ci_low": float(low), "ci_high": float(high), "p_value": float(min(p_value, 1.0))}


def run_level_differences(sweeps: pd.DataFrame, a: str, b: str, depth: int, test_set: str = "test",
                          metric: str = "WER", confidence: float = 0.95) -> dict:
    """Paired t-interval over (fold, seed) of ``metric(a) - metric(b)`` at ``depth`` and its p-value."""
    from scipy import stats

    at = sweeps[(sweeps["depth"] == depth) & (sweeps["test_set"] == test_set)]
    left = at[at["method"] == a].set_index(["fold", "seed"])[metric]
    right = at[at["method"] == b].set_index(["fold", "seed"])[metric]
    diffs = (left - right).dropna()
    mean, low, high = t_interval(diffs.to_numpy(), confidence)
    p_value = math.nan
    if len(diffs) >= 2:
        p_value = 1.0 if diffs.std(ddof=1) == 0 and mean == 0 else float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"a": a, "b": b, "depth": int(depth), "runs": int(len(diffs)), "run_diff": mean, "run_ci_low": low,
            "run_ci_high": high, "run_p_value": p_value}


def significance_table(sweeps: pd.DataFrame, utts: pd.DataFrame, pairs: Sequence[tuple[str, str]] = PAIRS,
                       n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Per pair and depth: the paired bootstrap over utterances and the run-level paired t-interval."""
    methods = set(sweeps["method"])
    rows = []
    for a, b in pairs:
        if a not in methods or b not in methods:
            continue
        for depth in sorted(set(sweeps["depth"])):
            boot = paired_bootstrap(utts, a, b, int(depth), n_boot=n_boot, seed=seed)
            rows.append({**boot, **run_level_differences(sweeps, a, b, int(depth))})
    return pd.DataFrame(rows)


def run_level_table(sweeps: pd.DataFrame, pairs: Sequence[tuple[str, str]] = PAIRS, metric: str = "WER",
                    confidence: float = 0.95) -> pd.DataFrame:
    """Per pair and depth: the run-level paired t-interval of ``metric`` alone (for metrics without
    per-utterance errors, such as ``WER_beam``: the runs' wer files hold the greedy hypotheses)."""
    methods = set(sweeps["method"])
    rows = [run_level_differences(sweeps, a, b, int(depth), metric=metric, confidence=confidence)
            for a, b in pairs if a in methods and b in methods for depth in sorted(set(sweeps["depth"]))]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- training cost vs quality
def cost_curves(logs: pd.DataFrame, num_layers: int) -> pd.DataFrame:
    """Validation WER at depths N/2 and N against cumulative cost, per run and epoch: ``cum_s``, ``cum_cpu_s``,
    ``cum_steps`` and their ``total_*`` forms, which add the same fold and seed's whole teacher cost to RDLD
    and DLD (the teacher's own rows keep its cost). ``WER_half`` / ``WER_full`` are NaN where the run did not
    validate that depth (the static teacher validates only full depth)."""
    half = max(num_layers // 2, 1)
    frames = []
    teacher_cost = {}
    for (fold, seed), group in logs[logs["method"] == "teacher"].groupby(["fold", "seed"]):
        teacher_cost[(fold, seed)] = {c: group[c].max() for c in COST_UNITS.values()}
    for (fold, seed, method), group in logs.groupby(["fold", "seed", "method"], sort=False):
        group = group.copy()
        for unit, column in COST_UNITS.items():
            extra = teacher_cost.get((fold, seed), {}).get(column, math.nan) if base_method(method) in NEEDS_TEACHER \
                else 0.0
            group[f"total_{unit}"] = group[column] + extra

        def column(name: str):
            return group[name] if name in group and group[name].notna().any() else None

        full = column(f"WER_n{num_layers}")
        group["WER_full"] = full if full is not None else group["WER"]  # static: validated at full depth only
        half_wer = column(f"WER_n{half}")
        group["WER_half"] = half_wer if half_wer is not None else math.nan
        frames.append(group[["fold", "seed", "method", "epoch", *COST_UNITS.values(),
                             *(f"total_{u}" for u in COST_UNITS), "WER_half", "WER_full", "WER"]])
    return pd.concat(frames, ignore_index=True)


def _reach(group: pd.DataFrame, column: str, target: float) -> Optional[pd.Series]:
    """The first epoch row of ``group`` whose ``column`` is at most ``target``; None if never."""
    hit = group[group[column] <= target + 1e-9]
    return None if hit.empty else hit.iloc[0]


def cost_answers(curves: pd.DataFrame, reference: str = "rdsc", methods: Sequence[str] = ("dld", "rdld")
                 ) -> pd.DataFrame:
    """Per (fold, seed) and method, compared with ``reference`` (RDsc) of the same fold and seed.

    ``target_<d>``: RDsc's final validation WER at depth ``d`` (half / full) = its value at the epoch with the
    best checkpoint metric (mean WER over the validated depths, the checkpoint SpeechBrain keeps);
    ``reach_<unit>_<d>``: the method's cumulative cost (teacher included) at its first epoch whose WER at
    ``d`` is at most that target (NaN: never reached), ``ref_reach_<unit>_<d>`` RDsc's own; ``ref_<unit>``:
    RDsc's whole cost; ``cost_ratio_<unit>``: the method's whole cost (teacher + fine-tuning) over RDsc's
    (the paper claims DLD saves 33 %, a ratio of 0.67); ``own_ratio_<unit>`` and ``own_reach_<unit>_<d>``: the
    same without the teacher's cost (a user who already has the teacher). Units: ``s`` wall, ``cpu_s`` CPU
    seconds, ``steps``.
    """
    rows = []
    for (fold, seed), group in curves.groupby(["fold", "seed"]):
        ref = group[group["method"] == reference].sort_values("epoch")
        if ref.empty:
            continue
        best = ref.loc[ref["WER"].idxmin()]
        for method in methods:
            run = group[group["method"] == method].sort_values("epoch")
            if run.empty:
                continue
            row = {"fold": fold, "seed": seed, "method": method}
            for unit, column in COST_UNITS.items():
                row[f"ref_{unit}"] = ref[column].max()
                row[f"total_{unit}"] = run[f"total_{unit}"].max()
                row[f"cost_ratio_{unit}"] = row[f"total_{unit}"] / row[f"ref_{unit}"]
                row[f"own_ratio_{unit}"] = run[column].max() / row[f"ref_{unit}"]  # teacher given (already paid)
            for which in ("half", "full"):
                target = best[f"WER_{which}"]
                row[f"target_{which}"] = target
                hit, ref_hit = _reach(run, f"WER_{which}", target), _reach(ref, f"WER_{which}", target)
                for unit, column in COST_UNITS.items():
                    row[f"reach_{unit}_{which}"] = math.nan if hit is None else hit[f"total_{unit}"]
                    row[f"own_reach_{unit}_{which}"] = math.nan if hit is None else hit[column]
                    row[f"ref_reach_{unit}_{which}"] = math.nan if ref_hit is None else ref_hit[column]
            rows.append(row)
    return pd.DataFrame(rows)


def cost_summary(answers: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per method: mean (t-interval) of the whole-cost ratios to RDsc per unit, the saving ``1 - ratio`` in
    %, and in how many runs the method reached RDsc's final validation WER (half / full depth) at all and
    with less cumulative CPU time (wall time when CPU time is missing) than RDsc needed to reach it."""
    rows = []
    for method, group in answers.groupby("method", sort=False):
        row = {"method": method, "runs": len(group)}
        for unit in COST_UNITS:
            mean, low, high = t_interval(group[f"cost_ratio_{unit}"].dropna(), confidence)
            row.update({f"ratio_{unit}": mean, f"ratio_{unit}_low": low, f"ratio_{unit}_high": high,
                        f"saving_{unit}_pct": 100 * (1 - mean)})
            if f"own_ratio_{unit}" in group:
                mean, low, high = t_interval(group[f"own_ratio_{unit}"].dropna(), confidence)
                row.update({f"own_ratio_{unit}": mean, f"own_ratio_{unit}_low": low,
                            f"own_ratio_{unit}_high": high})
        unit = "cpu_s" if group["cost_ratio_cpu_s"].notna().all() else "s"
        row["sooner_unit"] = unit
        for which in ("half", "full"):
            reached = group[f"reach_{unit}_{which}"].notna()
            sooner = reached & (group[f"reach_{unit}_{which}"] < group[f"ref_reach_{unit}_{which}"])
            row[f"reached_{which}"] = int(reached.sum())
            row[f"sooner_{which}"] = int(sooner.sum())
            if f"own_reach_{unit}_{which}" in group:
                row[f"own_sooner_{which}"] = int((reached & (group[f"own_reach_{unit}_{which}"]
                                                             < group[f"ref_reach_{unit}_{which}"])).sum())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ export
def export_run(folder: str | Path, dest: str | Path, test_set: str = "test") -> list[Path]:
    """Copy a finished run's small result files (no checkpoints) to ``dest``, writing the compact
    ``utt_errors_<set>.csv`` from its wer files first; returns the copied files."""
    folder, dest = Path(folder), Path(dest)
    if not is_finished(folder):
        raise StudyError(f"{folder} is not a finished run (no depth_sweep_test.csv)")
    if not (folder / f"utt_errors_{test_set}.csv").is_file():
        write_utterance_errors(folder, test_set)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RUN_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
            copied.append(dest / name)
    return copied


def check_config(folder: str | Path, config: dict) -> None:
    """Write ``study.json`` (the study's configuration) into ``folder``, or check that the one there
    matches: runs of different configurations must not be aggregated together."""
    path = Path(folder) / "study.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != config:
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise StudyError(f"{path} was written by a study with another configuration (differs in {changed}); "
                             "use another --output/--export folder or the same options")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
