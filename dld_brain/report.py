"""Comparison of methods from their depth-sweep CSVs: a WER-per-depth table and a WER/parameters plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from dld_brain.sweep import markdown_table

STATIC_METHODS = ("teacher", "static")
#: method names as the paper writes them (for sentences)
DISPLAY = {"teacher": "teacher", "rdsc": "RDsc", "rdld": "RDLD", "dld": "DLD"}


def load_sweeps(csv_paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate depth-sweep CSVs; raise FileNotFoundError naming a missing one."""
    frames = []
    for path in csv_paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"depth sweep not found: {path} (has that method been trained and evaluated?)")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a depth-sweep CSV ({str(err).splitlines()[0]})") from None
        missing = [c for c in ("method", "test_set", "depth", "encoder_params") if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} is not a depth-sweep CSV: columns {missing} missing (give the "
                             "depth_sweep_<set>.csv files a recipe writes)")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def wer_table(sweeps: pd.DataFrame, metric: str = "WER") -> pd.DataFrame:
    """Rows: (test set, depth, executed encoder params); columns: methods in input order; values: ``metric``
    (greedy decoding), then ``<method> beam`` columns of ``<metric>_beam`` for the sweeps that have it."""
    order = list(dict.fromkeys(sweeps["method"]))
    table = sweeps.pivot_table(index=["test_set", "depth"], columns="method", values=metric, aggfunc="first")
    table = table[order].reset_index()
    beam_key = f"{metric}_beam"
    if beam_key in sweeps.columns and sweeps[beam_key].notna().any():
        beam = sweeps.pivot_table(index=["test_set", "depth"], columns="method", values=beam_key, aggfunc="first")
        beam_order = [m for m in order if m in beam.columns]
        beam = beam[beam_order].rename(columns={m: f"{m} beam" for m in beam_order}).reset_index()
        table = table.merge(beam, on=["test_set", "depth"], how="left")
        order = order + [f"{m} beam" for m in beam_order]
    params = sweeps.groupby(["test_set", "depth"])["encoder_params"].first().reset_index()
    table = table.merge(params, on=["test_set", "depth"])
    table["encoder_params"] = (table["encoder_params"] / 1e6).round(2)
    table = table.rename(columns={"encoder_params": "enc. params (M)"})
    return table[["test_set", "depth", "enc. params (M)"] + order]


def save_params_plot(fig, ax, path: str | Path) -> None:
    """Finish a metric-vs-executed-parameters plot (x label, grid, legend) and write it to ``path``."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("executed encoder parameters (M)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_wer_vs_params(sweeps: pd.DataFrame, path: str | Path, test_set: str, metric: str = "WER") -> None:
    """WER against executed encoder parameters: one curve per dynamic method, static models as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = sweeps[sweeps["test_set"] == test_set]
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab10").colors
    for index, (method, group) in enumerate(data.groupby("method", sort=False)):
        colour = colours[index % len(colours)]
        group = group.sort_values("depth")
        x = group["encoder_params"] / 1e6
        if method in STATIC_METHODS:
            full = group[group["depth"] == group["depth"].max()]
            ax.scatter(full["encoder_params"] / 1e6, full[metric], marker="*", s=160, zorder=5, color=colour,
                       label=f"{method} (full depth)")
        else:
            ax.plot(x, group[metric], marker="o", label=method, color=colour)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} vs executed parameters ({test_set})")
    save_params_plot(fig, ax, path)


def write_comparison(csv_paths: Sequence[str | Path], output_folder: str | Path, metric: str = "WER",
                     name: str = "comparison") -> Path:
    """Write ``<name>.csv``, ``<name>.md`` and one ``<name>_<set>.png`` per test set (name: comparison)."""
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    sweeps = load_sweeps(csv_paths)
    table = wer_table(sweeps, metric)
    table.to_csv(output_folder / f"{name}.csv", index=False)
    md = output_folder / f"{name}.md"
    beam = any(str(c).endswith(" beam") for c in table.columns)
    md.write_text(f"{metric} (%) per depth; `depth` = encoder layers run, `enc. params` = executed encoder "
                  f"parameters" + ("; `<method>`: greedy decoding, `<method> beam`: the recipe's beam search "
                                   "(dld_brain.decoding; FSDD: restricted to the digit words)" if beam else "")
                  + ".\n\n" + markdown_table(table) + "\n")
    for test_set in sweeps["test_set"].unique():
        plot_wer_vs_params(sweeps, output_folder / f"{name}_{test_set}.png", test_set, metric)
    return md


# ------------------------------------------------------------------------------------------ the FSDD study
def _ci_text(mean: float, low: float, high: float, digits: int = 1) -> str:
    """``12.3 [10.1, 14.5]`` (the interval left out when undefined)."""
    if pd.isna(mean):
        return ""
    if pd.isna(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summary_table(summary: pd.DataFrame, test_set: str = "test") -> pd.DataFrame:
    """Rows: depth (with executed encoder parameters); columns: methods; cells ``mean [CI low, high]``."""
    data = summary[summary["test_set"] == test_set]
    methods = list(dict.fromkeys(data["method"]))
    rows = []
    for depth, group in data.groupby("depth"):
        row = {"depth": int(depth), "enc. params (M)": round(group["encoder_params"].iloc[0] / 1e6, 2)}
        for method in methods:
            hit = group[group["method"] == method]
            row[method] = "" if hit.empty else _ci_text(*hit[["mean", "ci_low", "ci_high"]].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_summary(summary: pd.DataFrame, path: str | Path, test_set: str = "test", metric: str = "WER") -> None:
    """Mean WER against executed encoder parameters with 95 % confidence intervals as error bars: one curve
    per dynamic method, the static teacher at full depth as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[summary["test_set"] == test_set]
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab10").colors
    for index, (method, group) in enumerate(data.groupby("method", sort=False)):
        group = group.sort_values("depth")
        if method in STATIC_METHODS:
            group = group[group["depth"] == group["depth"].max()]
        x = group["encoder_params"] / 1e6
        err = [(group["mean"] - group["ci_low"]).fillna(0), (group["ci_high"] - group["mean"]).fillna(0)]
        n = int(group["n"].max())
        label = f"{method} (full depth, n={n})" if method in STATIC_METHODS else f"{method} (n={n})"
        ax.errorbar(x, group["mean"], yerr=err, marker="*" if method in STATIC_METHODS else "o",
                    markersize=12 if method in STATIC_METHODS else 5, capsize=3,
                    linestyle="none" if method in STATIC_METHODS else "-", color=colours[index % len(colours)],
                    label=label)
    ax.set_ylabel(f"{metric} (%), mean and 95 % CI")
    ax.set_title(f"{metric} vs executed parameters ({test_set}; folds x seeds)")
    save_params_plot(fig, ax, path)


def plot_cost_curves(curves: pd.DataFrame, path: str | Path, num_layers: int) -> None:
    """Validation WER at depth N/2 and N against cumulative training CPU time (wall time for logs without
    it; teacher included for RDLD and DLD, the teacher's own curve shown separately), each point the mean
    over runs of one epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    colours = plt.get_cmap("tab10").colors
    unit, unit_name = ("total_cpu_s", "CPU") if curves["total_cpu_s"].notna().all() else ("total_s", "wall")
    for ax, which, depth in ((axes[0], "half", max(num_layers // 2, 1)), (axes[1], "full", num_layers)):
        for index, (method, group) in enumerate(curves.groupby("method", sort=False)):
            means = group.groupby("epoch")[[unit, f"WER_{which}"]].mean()
            if means[f"WER_{which}"].isna().all():
                continue
            ax.plot(means[unit] / 60, means[f"WER_{which}"], marker=".", color=colours[index % len(colours)],
                    label=f"{method}{' (incl. teacher)' if method in ('rdld', 'dld') else ''}")
        ax.set_xlabel(f"cumulative training {unit_name} time (min), mean over runs")
        ax.set_ylabel(f"validation WER (%) at depth {depth}")
        ax.set_title(f"depth {depth} of {num_layers}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def significance_markdown(sig: pd.DataFrame) -> str:
    """The paired comparisons as a Markdown table (differences in WER points; negative = first is better)."""
    table = pd.DataFrame({
        "comparison": sig["a"] + " - " + sig["b"], "depth": sig["depth"],
        "diff, bootstrap 95 % CI": [_ci_text(*r, digits=2) for r in sig[["diff", "ci_low", "ci_high"]].values],
        "p (bootstrap)": sig["p_value"].map(lambda p: "" if pd.isna(p) else f"{p:.3f}"),
        "diff over runs, t 95 % CI": [_ci_text(*r, digits=2)
                                      for r in sig[["run_diff", "run_ci_low", "run_ci_high"]].values],
        "p (paired t)": sig["run_p_value"].map(lambda p: "" if pd.isna(p) else f"{p:.3f}"),
        "runs": sig["runs"], "utterances": sig["utterances"], "words": sig["words"]})
    return markdown_table(table)


def run_level_markdown(sig: pd.DataFrame) -> str:
    """Run-level paired differences (:func:`dld_brain.study.run_level_table`) as a Markdown table."""
    return markdown_table(pd.DataFrame({
        "comparison": sig["a"].map(lambda m: DISPLAY.get(m, m)) + " - " + sig["b"].map(lambda m: DISPLAY.get(m, m)),
        "depth": sig["depth"],
        "diff over runs, t 95 % CI": [_ci_text(*r, digits=2) for r in sig[["run_diff", "run_ci_low", "run_ci_high"]].values],
        "p (paired t)": sig["run_p_value"].map(lambda p: "" if pd.isna(p) else f"{p:.3f}"), "runs": sig["runs"]}))


def verdict(sig: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per comparison: at which depths the first method is significantly better, worse, or not
    distinguishable (paired bootstrap, two-sided, level ``alpha``)."""
    lines = []
    for (a, b), group in sig.groupby(["a", "b"], sort=False):
        better = group[(group["p_value"] < alpha) & (group["diff"] < 0)]["depth"].tolist()
        worse = group[(group["p_value"] < alpha) & (group["diff"] > 0)]["depth"].tolist()
        tied = group[~group["depth"].isin(better + worse)]["depth"].tolist()
        lines.append(f"{DISPLAY.get(a, a)} vs {DISPLAY.get(b, b)}: lower WER at depths {better or 'none'}, "
                     f"higher at {worse or 'none'}, no significant difference at {tied or 'none'} (paired bootstrap, "
                     f"p < {alpha}).")
    return lines


def cost_markdown(summary: pd.DataFrame, num_layers: int) -> str:
    """The training-cost answers as a Markdown table."""
    half = max(num_layers // 2, 1)
    columns = {"method": summary["method"], "runs": summary["runs"]}
    for unit, name in (("cpu_s", "CPU time"), ("s", "wall time"), ("steps", "steps")):
        ratios = summary[[f"ratio_{unit}", f"ratio_{unit}_low", f"ratio_{unit}_high"]].values
        columns[f"cost / RDsc ({name})"] = [_ci_text(*r, digits=2) for r in ratios]
        columns[f"saving ({name})"] = summary[f"saving_{unit}_pct"].map(lambda v: "" if pd.isna(v) else f"{v:.0f} %")
    own = "own_ratio_cpu_s" in summary and "own_sooner_half" in summary
    if own:
        columns["fine-tuning alone / RDsc (CPU time)"] = [
            _ci_text(*r, digits=2) for r in summary[["own_ratio_cpu_s", "own_ratio_cpu_s_low", "own_ratio_cpu_s_high"]].values]
    for which, label in (("half", f"reached RDsc's final valid WER at n={half}"), ("full", f"... at n={num_layers}")):
        cols = [f"reached_{which}", f"sooner_{which}"] + ([f"own_sooner_{which}"] if own else [])
        columns[label + (" (sooner; sooner without the teacher)" if own else " (sooner)")] = [
            f"{r[0]} ({r[1]}" + (f"; {r[2]})" if own else ")") for r in summary[cols].values]
    return markdown_table(pd.DataFrame(columns))


def write_study_report(study_root: str | Path, output_folder: Optional[str | Path] = None,
                       expected: Optional[Sequence] = None, n_boot: int = 10000, header: str = "") -> Path:
    """Aggregate every finished run under ``study_root`` (see :mod:`dld_brain.study`) into
    ``<output_folder>/study.md`` with its CSV tables (``summary``, ``significance``, ``cost_curves``,
    ``cost_runs``, ``cost_summary``) and plots (``study_wer_vs_params.png``, ``study_cost.png``);
    ``expected``: the runs the study should have (the missing ones are listed). Returns the .md path."""
    from dld_brain import study

    root = Path(study_root)
    out = Path(output_folder or root)
    out.mkdir(parents=True, exist_ok=True)
    runs = study.find_runs(root)
    sweeps = study.collect_sweeps(root, runs)
    num_layers = int(sweeps["depth"].max())
    summary = study.depth_summary(sweeps)
    summary.to_csv(out / "summary.csv", index=False)
    utts = study.collect_utterances(root, runs)
    sig = study.significance_table(sweeps, utts, pairs=study.study_pairs(sweeps["method"]), n_boot=n_boot)
    sig.to_csv(out / "significance.csv", index=False)
    core = summary[~summary["method"].isin(list(study.VARIANTS))]  # the four methods; variants: own table
    plot_summary(core, out / "study_wer_vs_params.png")
    counts = sweeps.drop_duplicates(["fold", "seed", "method"]).groupby("method", sort=False).size()
    lines = [header or "# FSDD study", "",
             f"Finished runs: {len(runs)} ({', '.join(f'{m}: {n}' for m, n in counts.items())}); folds "
             f"{sorted(set(sweeps['fold']))}, seeds {sorted(set(sweeps['seed']))}."]
    if expected is not None:
        missing = sorted(r.name for r in set(expected) - set(runs))
        lines.append(f"Missing runs ({len(missing)}): {', '.join(missing) if missing else 'none'}.")
    lines += ["", "## Test WER (%) per depth: mean [95 % t-interval] over folds x seeds", "",
              markdown_table(summary_table(core)), "", "![WER vs executed parameters](study_wer_vs_params.png)",
              ""]
    variants = [m for m in study.VARIANTS if m in set(summary["method"])]
    if variants:
        shown = summary[summary["method"].isin(["rdld", "dld", *variants])]
        lines += ["## Settings the paper leaves open (issue 15 item 4): test WER (%) per depth, mean [95 % "
                  "t-interval]", "", "; ".join(f"`{m}`: {study.VARIANTS[m][0]} with "
                                              f"{' '.join(study.VARIANTS[m][1])}" for m in variants), "",
                  markdown_table(summary_table(shown)), ""]
    if "WER_beam" in sweeps.columns and sweeps["WER_beam"].notna().any():
        beam = study.depth_summary(sweeps[sweeps["WER_beam"].notna()], metric="WER_beam")
        beam.to_csv(out / "summary_beam.csv", index=False)
        effect = study.beam_effect(sweeps)
        effect.to_csv(out / "beam_effect.csv", index=False)
        lines += ["## Test WER (%) with the recipe's beam search (dld_brain.decoding: beam over the lexicon of "
                  "the training words, so only digit words come out): mean [95 % t-interval]", "",
                  markdown_table(summary_table(beam)), "",
                  "What the beam search changes, `WER_beam - WER` in points (negative: it helps), paired "
                  "within each run: mean [95 % t-interval]", "", markdown_table(summary_table(effect)), ""]
        beam_sig = study.run_level_table(sweeps[sweeps["WER_beam"].notna()], study.study_pairs(sweeps["method"]),
                                         metric="WER_beam")
        if not beam_sig.empty:
            beam_sig.to_csv(out / "significance_beam.csv", index=False)
            lines += ["Paired differences with the beam search (WER_beam points; negative: the first method is "
                      "better): paired t over the fold x seed runs", "", run_level_markdown(beam_sig), ""]
    lines += ["## Paired differences (WER points; negative: the first method is better)", ""]
    if sig.empty:
        lines.append("No pair of methods with common runs yet.")
    else:
        lines += [significance_markdown(sig), "", *[f"- {v}" for v in verdict(sig)]]
    try:
        logs = study.collect_epoch_logs(root, runs)
    except study.StudyError as err:
        lines += ["", f"## Training cost", "", f"Not available: {err}"]
    else:
        curves = study.cost_curves(logs, num_layers)
        curves.to_csv(out / "cost_curves.csv", index=False)
        plot_cost_curves(curves, out / "study_cost.png", num_layers)
        answers = study.cost_answers(curves)
        answers.to_csv(out / "cost_runs.csv", index=False)
        lines += ["", "## Training cost vs quality", "",
                  "Whole training cost of teacher + RDLD/DLD relative to RDsc's (same fold and seed; time = "
                  "training + validation epochs, CPU seconds of the run's process and wall seconds, the latter "
                  "noisy on a shared machine; steps = optimiser steps, of unequal cost: a DLD step also runs "
                  "the teacher), and in how many runs the method's validation WER reached RDsc's final "
                  "validation WER (at the epoch of RDsc's kept checkpoint) at all, and with less cumulative "
                  "CPU time than RDsc itself needed. \"Fine-tuning alone\" and \"without the teacher\" leave the "
                  "teacher's cost out (a user who already has a trained model). The paper claims a 33 % saving "
                  "(ratio 0.67). The epochs per method are the study's budget (not tuned to equal quality), so "
                  "the ratios are this budget's, not a property of the methods alone.", ""]
        if answers.empty:
            lines.append("No fold and seed has both RDsc and RDLD/DLD yet.")
        else:
            cost = study.cost_summary(answers)
            cost.to_csv(out / "cost_summary.csv", index=False)
            lines.append(cost_markdown(cost, num_layers))
        teacher = logs[logs["method"] == "teacher"].groupby(["fold", "seed"])[["cum_s", "cum_cpu_s"]].max()
        if len(teacher):
            lines += ["", f"Teacher alone: {teacher['cum_cpu_s'].mean() / 60:.1f} CPU min "
                          f"({teacher['cum_s'].mean() / 60:.1f} wall min) mean per run ({len(teacher)} runs)."]
        lines += ["", "![validation WER vs cumulative training time](study_cost.png)"]
    md = out / "study.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv=None) -> None:
    """CLI: ``python -m dld_brain.report OUT_DIR sweep1.csv sweep2.csv ...``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_folder")
    parser.add_argument("sweeps", nargs="+", help="depth_sweep_<set>.csv files, one per method")
    parser.add_argument("--metric", default="WER")
    args = parser.parse_args(argv)
    try:
        sweeps = load_sweeps(args.sweeps)
        if args.metric not in sweeps.columns:
            raise ValueError(f"metric {args.metric!r} is not a column of the sweeps (they have "
                             f"{[c for c in sweeps.columns if c not in ('method', 'test_set', 'depth')]})")
        print(write_comparison(args.sweeps, args.output_folder, args.metric).read_text())
    except (OSError, ValueError) as err:  # user input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()


def write_seeds_report(experiment_root: str | Path, seeds: Sequence[int], methods: Sequence[str],
                       metric: str = "WER", pairs: Sequence[tuple[str, str]] = (), title: str = "",
                       test_set: str = "test") -> Path:
    """Aggregate ``<experiment_root>/seed<s>/<method>/depth_sweep_<set>.csv`` over seeds into
    ``<experiment_root>/summary.md`` (mean [95 % t-interval] per depth and method), ``summary.csv``,
    ``significance.csv`` (paired t over seeds of ``metric(a) - metric(b)`` per depth for ``pairs``) and
    ``summary_<set>.png`` (error bars = the intervals). Seeds or methods without a finished sweep are listed as
    missing rather than failing, so a partial run can be looked at. Returns the .md path."""
    from dld_brain import study

    root = Path(experiment_root)
    frames, missing = [], []
    for seed in seeds:
        for method in methods:
            path = root / f"seed{seed}" / method / f"depth_sweep_{test_set}.csv"
            if path.is_file():
                frames.append(pd.read_csv(path).assign(fold=0, seed=seed, method=method))
            else:
                missing.append(f"seed{seed}/{method}")
    if not frames:
        raise ValueError(f"no finished run under {root} (looked for seed<s>/<method>/depth_sweep_{test_set}.csv)")
    sweeps = pd.concat(frames, ignore_index=True)
    if metric not in sweeps:
        raise ValueError(f"{root}: the depth sweeps have no {metric!r} column (have {list(sweeps.columns)})")
    summary = study.depth_summary(sweeps, metric=metric)
    summary.to_csv(root / "summary.csv", index=False)
    plot_summary(summary, root / f"summary_{test_set}.png", test_set, metric=metric)
    lines = [title or f"# {metric} over seeds", "",
             f"Seeds {list(seeds)}; finished runs: {len(frames)}; missing: {', '.join(missing) or 'none'}.", "",
             f"{metric} (%) per depth on {test_set}: mean [95 % t-interval over seeds]", "",
             markdown_table(summary_table(summary, test_set)), ""]
    sig = study.run_level_table(sweeps, [p for p in pairs], metric=metric)
    if not sig.empty:
        sig.to_csv(root / "significance.csv", index=False)
        lines += [f"Paired differences over seeds ({metric} points, same split and seed): paired t", "",
                  run_level_markdown(sig), ""]
    md = root / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    return md
