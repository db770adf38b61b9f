"""New-voices comparison (issue 15 item 6): FSDD recognisers trained two ways, scored on leave-one-speaker-out
folds, the held-out speaker's isolated digits and a TTS probe; means with t-intervals over folds and paired
differences between configurations (``recipes/FSDD/run_new_voices.py`` wires it, docs/new_voices.md reports it).

A run folder is ``<output>/<config>/fold<k>/teacher`` holding ``depth_sweep_<set>.csv`` (and its
``wer_<set>_n<depth>*.txt``), as ``recipes/FSDD/train.py`` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from dld_brain.data.tts_probe import wer_by_group
from dld_brain.study import depth_summary, run_level_differences, t_interval

SETS = ("test", "test_isolated", "tts")
#: the columns of the runner's timing.csv (no header: one line appended per finished process)
TIMING_COLUMNS = ["config", "fold", "exit", "wall_s", "cpu_s"]


def run_folder(output: str | Path, config: str, fold: int, method: str = "teacher") -> Path:
    """Where ``recipes/FSDD/train.py`` writes the run of ``config`` on LOSO fold ``fold``."""
    return Path(output) / config / f"fold{fold}" / method


def collect_voice_runs(output: str | Path, configs: Sequence[str], folds: Sequence[int], seed: int = 1,
                       sets: Sequence[str] = SETS, method: str = "teacher") -> pd.DataFrame:
    """The deepest row of every finished sweep: ``method`` (= the configuration), ``test_set``, ``fold``,
    ``seed``, ``depth``, ``WER``, ``WER_beam``, ``encoder_params``; the frame ``dld_brain.study``'s statistics
    take. Unfinished runs (no sweep yet) are left out."""
    rows = []
    for config in configs:
        for fold in folds:
            for test_set in sets:
                path = run_folder(output, config, fold, method) / f"depth_sweep_{test_set}.csv"
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
                         test_set: str = "tts", method: str = "teacher") -> pd.DataFrame:
    """The probe's WER per voice and per string kind (isolated / strings) of every finished run at its deepest
    swept depth, tagged with ``config`` and ``fold``."""
    tables = []
    for config in configs:
        for fold in folds:
            folder = run_folder(output, config, fold, method)
            sweep = folder / f"depth_sweep_{test_set}.csv"
            if not sweep.is_file():
                continue
            table = wer_by_group(folder, test_set, manifest, int(pd.read_csv(sweep)["depth"].max()))
            tables.append(table.assign(config=config, fold=int(fold)))
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
                    timing: Optional[pd.DataFrame], configs: Sequence[str], folds: Sequence[int]):
    """Add the finished runs of an earlier report (``folder``: its ``new_voices.csv``, ``tts_by_voice.csv``,
    ``timing.csv``, e.g. one committed under docs/) to this machine's, restricted to ``configs`` x ``folds``;
    a run present in both is taken from this machine. This is how a study run in pieces, on other days or
    machines, is re-aggregated without its checkpoints. Returns ``(runs, groups, timing)``."""
    folder = Path(folder)
    path = folder / "new_voices.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report to include (give a folder written by run_new_voices.py)")

    def ours(frame: pd.DataFrame, column: str) -> pd.DataFrame:
        return frame[frame[column].isin(list(configs)) & frame["fold"].isin([int(f) for f in folds])]

    old_runs = ours(pd.read_csv(path), "method")
    runs = _prefer_fresh(runs, old_runs, ["method", "test_set", "fold", "seed"])
    if (folder / "tts_by_voice.csv").is_file():
        old_groups = ours(pd.read_csv(folder / "tts_by_voice.csv"), "config")
        fresh_runs = set() if groups.empty else set(map(tuple, groups[["config", "fold"]].itertuples(index=False)))
        old_groups = old_groups[[tuple(r) not in fresh_runs for r in old_groups[["config", "fold"]].itertuples(
            index=False)]]
        groups = pd.concat([groups, old_groups], ignore_index=True) if not groups.empty else old_groups
    if (folder / "timing.csv").is_file():
        old_timing = pd.read_csv(folder / "timing.csv", names=TIMING_COLUMNS)
        old_timing = ours(old_timing[old_timing["exit"] == 0], "config")
        fresh_runs = set() if timing is None or timing.empty else set(
            map(tuple, timing[["config", "fold"]].itertuples(index=False)))
        old_timing = old_timing[[tuple(r) not in fresh_runs for r in old_timing[["config", "fold"]].itertuples(
            index=False)]]
        timing = old_timing if timing is None or timing.empty else pd.concat([timing, old_timing],
                                                                              ignore_index=True)
    return runs.sort_values(["method", "test_set", "fold"], kind="stable").reset_index(drop=True), groups, timing


def config_summary(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per set and configuration, greedy and beam WER at full depth: folds ``n``, mean and t-interval."""
    if runs.empty:
        return pd.DataFrame()
    greedy = depth_summary(runs, "WER", confidence)
    beam = depth_summary(runs[runs["WER_beam"].notna()], "WER_beam", confidence)
    keys = ["test_set", "depth", "method", "n"]
    table = greedy[keys + ["mean", "ci_low", "ci_high"]].merge(
        beam[keys + ["mean", "ci_low", "ci_high"]], on=keys, how="left", suffixes=("", "_beam"))
    return table.rename(columns={"method": "config"})


def config_differences(runs: pd.DataFrame, a: str, b: str, confidence: float = 0.95) -> pd.DataFrame:
    """``a - b`` per set, greedy and beam: paired t-interval over the folds both finished, and its p-value
    (negative = ``a`` makes fewer errors)."""
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
    """Per configuration and probe group (voice, isolated, strings, all): mean WER over folds and its interval."""
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
    """The report: WER per set and configuration (mean [95 % CI] over folds), the paired ``a - b`` differences
    (one table per configuration in ``a``, then one per extra ``(x, y)`` of ``pairs``), the probe per voice,
    and the training cost per configuration when ``timing`` is given."""
    from dld_brain.sweep import markdown_table

    lines = [f"## WER (%) at full depth, mean [95 % CI] over {runs['fold'].nunique()} leave-one-speaker-out folds",
             ""]
    summary = config_summary(runs)
    table = pd.DataFrame({"set": summary["test_set"], "config": summary["config"], "folds": summary["n"],
                          "greedy": [_ci(r) for _, r in summary.iterrows()],
                          "beam + lexicon": [_ci(r, "_beam") for _, r in summary.iterrows()]})
    lines += [markdown_table(table), ""]
    compared = [(config, b) for config in ([a] if isinstance(a, str) else list(a))] + list(pairs)
    for config, b in compared:
        diffs = config_differences(runs, config, b)
        if diffs.empty:
            continue
        lines += [f"## Paired difference {config} - {b} (points; negative: {config} better), t over folds", ""]
        view = pd.DataFrame({"set": diffs["test_set"], "decoding": diffs["metric"].map(
            {"WER": "greedy", "WER_beam": "beam + lexicon"}), "folds": diffs["runs"],
            "diff [95 % CI]": [f"{r.run_diff:+.1f} [{r.run_ci_low:+.1f}, {r.run_ci_high:+.1f}]"
                               if pd.notna(r.run_ci_low) else f"{r.run_diff:+.1f}" for r in diffs.itertuples()],
            "p": [f"{p:.3f}" if pd.notna(p) else "-" for p in diffs["run_p_value"]]})
        lines += [markdown_table(view), ""]
    if not groups.empty:
        probe = probe_summary(groups)
        wide = probe.assign(text=[_ci(r) for _, r in probe.iterrows()]).pivot_table(
            index="group", columns=["config", "metric"], values="text", aggfunc="first", sort=False)
        wide.columns = [f"{config} {'greedy' if metric == 'WER' else 'beam'}" for config, metric in wide.columns]
        lines += ["## TTS probe per voice and string kind (WER %, mean [95 % CI] over folds)", "",
                  markdown_table(wide.reset_index()), ""]
    if timing is not None and not timing.empty:
        per_run = timing.groupby(["config", "fold"], as_index=False)[["wall_s", "cpu_s"]].sum()  # resumed: summed
        cost = per_run.groupby("config", as_index=False)[["wall_s", "cpu_s"]].mean().round(0)
        lines += ["## Training + scoring cost per run (mean over folds; a resumed run's pieces summed)", "",
                  markdown_table(cost), ""]
    return "\n".join(lines)
