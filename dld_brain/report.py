"""Comparison of methods from their depth-sweep CSVs: a WER-per-depth table and a WER/parameters plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from dld_brain.sweep import markdown_table

STATIC_METHODS = ("teacher", "static")


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
    ax.set_xlabel("executed encoder parameters (M)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} vs executed parameters ({test_set})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
