"""New-voices comparison (issue 15 item 6): FSDD recognisers trained two ways, scored on leave-one-speaker-out
folds, the held-out speaker's isolated digits and a TTS probe; means with t-intervals over folds and paired
differences between configurations (``recipes/FSDD/run_new_voices.py`` wires it, docs/new_voices.md reports it).

A run folder is ``<output>/<config>/fold<k>/teacher`` (seed 1) or ``<output>/<config>/fold<k>/seed<s>/teacher``
(seed s > 1) holding ``depth_sweep_<set>.csv`` (and its ``wer_<set>_n<depth>*.txt``), as ``recipes/FSDD/train.py``
writes it. Statistics are over the (fold, seed) runs, paired by (fold, seed).
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from dld_brain.data.tts_probe import wer_by_group
from dld_brain.study import depth_summary, run_level_differences, t_interval

SETS = ("test", "test_isolated", "tts")
#: the columns of the runner's timing.csv (no header: one line appended per finished process; lines written
#: before seeds were added have no ``seed`` field and are seed 1)
TIMING_COLUMNS = ["config", "fold", "exit", "wall_s", "cpu_s", "seed"]


def run_folder(output: str | Path, config: str, fold: int, method: str = "teacher", seed: int = 1) -> Path:
    """Where ``recipes/FSDD/train.py`` writes the run of ``config`` on LOSO fold ``fold`` with ``seed``; seed 1
    keeps the layout of the runs made before seeds were added, so they still resume and aggregate."""
    fold_dir = Path(output) / config / f"fold{fold}"
    return (fold_dir if int(seed) == 1 else fold_dir / f"seed{int(seed)}") / method


def read_timing(path: str | Path) -> pd.DataFrame:
    """The runner's headerless ``timing.csv``, finished processes only (exit 0); no seed field = seed 1."""
    with open(path) as handle:
        header = handle.readline().startswith("config,")  # timing_all.csv of an older runner had one
    timing = pd.read_csv(path, names=TIMING_COLUMNS, skiprows=1 if header else 0)
    timing["seed"] = timing["seed"].fillna(1).astype(int)
    return timing[timing["exit"] == 0].reset_index(drop=True)


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    return [int(seeds)] if isinstance(seeds, (int, float)) else [int(s) for s in seeds]


def collect_voice_runs(output: str | Path, configs: Sequence[str], folds: Sequence[int],
                       seeds: int | Sequence[int] = 1, sets: Sequence[str] = SETS,
                       method: str = "teacher") -> pd.DataFrame:
    """The deepest row of every finished sweep: ``method`` (= the configuration), ``test_set``, ``fold``,
    ``seed``, ``depth``, ``WER``, ``WER_beam``, ``encoder_params``; the frame ``dld_brain.study``'s statistics
    take. Unfinished runs (no sweep yet) are left out."""
    rows = []
    for config, fold, seed in product(configs, folds, _seeds(seeds)):
        for test_set in sets:
            path = run_folder(output, config, fold, method, seed) / f"depth_sweep_{test_set}.csv"
            if not path.is_file():
                continue
            sweep = pd.read_csv(path)
            last = sweep[sweep["depth"] == sweep["depth"].max()].iloc[0]
            rows.append({"method": config, "test_set": test_set, "fold": int(fold), "seed": int(seed),
                         "depth": int(last["depth"]), "WER": float(last["WER"]),
                         "WER_beam": float(last["WER_beam"]) if "WER_beam" in last else float("nan"),
                         "encoder_params": int(last["encoder_params"])})
    return pd.DataFrame(rows, columns=["method", "test_set", "fold", "seed", "depth", "WER", "WER_beam",
                                       "encoder_params"])


def collect_probe_groups(output: str | Path, configs: Sequence[str], folds: Sequence[int], manifest: str | Path,
                         test_set: str = "tts", method: str = "teacher",
                         seeds: int | Sequence[int] = 1) -> pd.DataFrame:
    """The probe's WER per voice and per string kind (isolated / strings) of every finished run at its deepest
    swept depth, tagged with ``config``, ``fold`` and ``seed``."""
    tables = []
    for config, fold, seed in product(configs, folds, _seeds(seeds)):
        folder = run_folder(output, config, fold, method, seed)
        sweep = folder / f"depth_sweep_{test_set}.csv"
        if not sweep.is_file():
            continue
        table = wer_by_group(folder, test_set, manifest, int(pd.read_csv(sweep)["depth"].max()))
        tables.append(table.assign(config=config, fold=int(fold), seed=int(seed)))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _prefer_fresh(fresh: pd.DataFrame, committed: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``fresh`` plus the rows of ``committed`` whose ``keys`` (a run's identity) ``fresh`` does not hold."""
    if committed.empty:
        return fresh
    if fresh.empty:
        return committed.reset_index(drop=True)
    seen = set(map(tuple, fresh[list(keys)].itertuples(index=False)))
    kept = committed[[tuple(r) not in seen for r in committed[list(keys)].itertuples(index=False)]]
    return pd.concat([fresh, kept], ignore_index=True)


def merge_committed(folder: str | Path, runs: pd.DataFrame, groups: pd.DataFrame,
                    timing: Optional[pd.DataFrame], configs: Sequence[str], folds: Sequence[int],
                    seeds: Optional[Sequence[int]] = None):
    """Add the finished runs of an earlier report (``folder``: its ``new_voices.csv``, ``tts_by_voice.csv``,
    ``timing.csv``, e.g. one committed under docs/) to this machine's, restricted to ``configs`` x ``folds``
    (x ``seeds`` when given); a run (config, fold, seed) present in both is taken from this machine. This is how a
    study run in pieces, on other days or machines, is re-aggregated without its checkpoints. Files written
    before seeds were added hold seed 1. Returns ``(runs, groups, timing)``."""
    folder = Path(folder)
    path = folder / "new_voices.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report to include (give a folder written by run_new_voices.py)")

    def ours(frame: pd.DataFrame, column: str) -> pd.DataFrame:
        if "seed" not in frame:
            frame = frame.assign(seed=1)
        keep = frame[column].isin(list(configs)) & frame["fold"].isin([int(f) for f in folds])
        if seeds is not None:
            keep &= frame["seed"].isin([int(s) for s in seeds])
        return frame[keep]

    runs = _prefer_fresh(runs, ours(pd.read_csv(path), "method"), ["method", "test_set", "fold", "seed"])
    if (folder / "tts_by_voice.csv").is_file():
        old_groups = ours(pd.read_csv(folder / "tts_by_voice.csv"), "config")
        if not groups.empty and "seed" not in groups:
            groups = groups.assign(seed=1)
        groups = _prefer_runs(groups, old_groups)
    if (folder / "timing.csv").is_file():
        old_timing = ours(read_timing(folder / "timing.csv"), "config")
        if timing is not None and not timing.empty and "seed" not in timing:
            timing = timing.assign(seed=1)
        timing = _prefer_runs(pd.DataFrame() if timing is None else timing, old_timing)
    return (runs.sort_values(["method", "test_set", "fold", "seed"], kind="stable").reset_index(drop=True),
            groups, timing)


def _prefer_runs(fresh: pd.DataFrame, committed: pd.DataFrame) -> pd.DataFrame:
    """Every row of ``fresh`` and the rows of ``committed`` whose run (config, fold, seed) ``fresh`` lacks
    (several rows per run: per voice, or a resumed run's pieces)."""
    if fresh.empty:
        return committed.reset_index(drop=True)
    keys = ["config", "fold", "seed"]
    seen = set(map(tuple, fresh[keys].itertuples(index=False)))
    kept = committed[[tuple(r) not in seen for r in committed[keys].itertuples(index=False)]]
    return pd.concat([fresh, kept], ignore_index=True)


def config_summary(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per set and configuration, greedy and beam WER at full depth: runs ``n`` (folds x seeds), mean and
    t-interval."""
    if runs.empty:
        return pd.DataFrame()
    greedy = depth_summary(runs, "WER", confidence)
    beam = depth_summary(runs[runs["WER_beam"].notna()], "WER_beam", confidence)
    keys = ["test_set", "depth", "method", "n"]
    table = greedy[keys + ["mean", "ci_low", "ci_high"]].merge(
        beam[keys + ["mean", "ci_low", "ci_high"]], on=keys, how="left", suffixes=("", "_beam"))
    return table.rename(columns={"method": "config"})


def config_differences(runs: pd.DataFrame, a: str, b: str, confidence: float = 0.95) -> pd.DataFrame:
    """``a - b`` per set, greedy and beam: paired t-interval over the (fold, seed) runs both finished, and its
    p-value (negative = ``a`` makes fewer errors)."""
    rows = []
    for test_set in dict.fromkeys(runs["test_set"]):
        at = runs[runs["test_set"] == test_set]
        depth = int(at["depth"].max())
        for metric in ("WER", "WER_beam"):
            diff = run_level_differences(at, a, b, depth, test_set, metric, confidence)
            if diff["runs"]:
                rows.append({"test_set": test_set, "metric": metric, **diff})
    return pd.DataFrame(rows)


def probe_summary(groups: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per configuration and probe group (voice, isolated, strings, all): mean WER over the runs (folds x seeds)
    and its interval."""
    rows = []
    for (config, group), part in groups.groupby(["config", "group"], sort=False):
        for metric in ("WER", "WER_beam"):
            if metric not in part or part[metric].isna().all():
                continue
            mean, low, high = t_interval(part[metric].dropna().to_numpy(), confidence)
            rows.append({"config": config, "group": group, "metric": metric, "n": int(part[metric].notna().sum()),
                         "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def _ci(row, prefix: str = "") -> str:
    mean, low, high = row[f"mean{prefix}"], row[f"ci_low{prefix}"], row[f"ci_high{prefix}"]
    if pd.isna(mean):
        return "-"
    return f"{mean:.1f}" if pd.isna(low) else f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def voices_markdown(runs: pd.DataFrame, groups: pd.DataFrame, a: str | Sequence[str] = "voices",
                    b: str = "default", timing: Optional[pd.DataFrame] = None,
                    pairs: Sequence[tuple[str, str]] = ()) -> str:
    """The report: WER per set and configuration (mean [95 % CI] over folds x seeds), the paired ``a - b``
    differences
    (one table per configuration in ``a``, then one per extra ``(x, y)`` of ``pairs``), the probe per voice,
    and the training cost per configuration when ``timing`` is given."""
    from dld_brain.sweep import markdown_table

    seeds = runs["seed"].nunique()
    over = f"{runs['fold'].nunique()} leave-one-speaker-out folds" + (f" x {seeds} seeds" if seeds > 1 else "")
    unit = "runs" if seeds > 1 else "folds"
    lines = [f"## WER (%) at full depth, mean [95 % CI] over {over}", ""]
    summary = config_summary(runs)
    table = pd.DataFrame({"set": summary["test_set"], "config": summary["config"], unit: summary["n"],
                          "greedy": [_ci(r) for _, r in summary.iterrows()],
                          "beam + lexicon": [_ci(r, "_beam") for _, r in summary.iterrows()]})
    lines += [markdown_table(table), ""]
    compared = [(config, b) for config in ([a] if isinstance(a, str) else list(a))] + list(pairs)
    for config, b in compared:
        diffs = config_differences(runs, config, b)
        if diffs.empty:
            continue
        lines += [f"## Paired difference {config} - {b} (points; negative: {config} better), t over {unit}", ""]
        view = pd.DataFrame({"set": diffs["test_set"], "decoding": diffs["metric"].map(
            {"WER": "greedy", "WER_beam": "beam + lexicon"}), unit: diffs["runs"],
            "diff [95 % CI]": [f"{r.run_diff:+.1f} [{r.run_ci_low:+.1f}, {r.run_ci_high:+.1f}]"
                               if pd.notna(r.run_ci_low) else f"{r.run_diff:+.1f}" for r in diffs.itertuples()],
            "p": [f"{p:.3f}" if pd.notna(p) else "-" for p in diffs["run_p_value"]]})
        lines += [markdown_table(view), ""]
    if not groups.empty:
        probe = probe_summary(groups)
        wide = probe.assign(text=[_ci(r) for _, r in probe.iterrows()]).pivot_table(
            index="group", columns=["config", "metric"], values="text", aggfunc="first", sort=False)
        wide.columns = [f"{config} {'greedy' if metric == 'WER' else 'beam'}" for config, metric in wide.columns]
        lines += [f"## TTS probe per voice and string kind (WER %, mean [95 % CI] over {unit})", "",
                  markdown_table(wide.reset_index()), ""]
    if timing is not None and not timing.empty:
        keys = ["config", "fold"] + (["seed"] if "seed" in timing else [])
        per_run = timing.groupby(keys, as_index=False)[["wall_s", "cpu_s"]].sum()  # a resumed run's pieces summed
        cost = per_run.groupby("config", as_index=False)[["wall_s", "cpu_s"]].mean().round(0)
        lines += [f"## Training + scoring cost per run (mean over {unit}; a resumed run's pieces summed)", "",
                  markdown_table(cost), ""]
    return "\n".join(lines)
