"""Comparison of layer choices at every budget k on one backbone: the trained selector, random layers,
the best fixed pattern (searched on validation), early exit (first k) and the even policy; plus the
selector's cost (parameters, latency) and per-layer usage.

Front-end outputs are computed once per utterance and cached, then every layer choice runs on them with
:func:`dld_brain.lobes.selector.run_grouped` (one run per distinct layer set in a batch).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd
import speechbrain as sb
import torch
from speechbrain.utils.metric_stats import ErrorRateStats

from dld_brain.gates import select_layers
from dld_brain.lobes.selector import SelectiveDepthModel, masks_to_layer_sets, run_grouped, topk_mask
from dld_brain.sweep import latency_batch, markdown_table


@dataclass
class CachedBatch:
    """One evaluation batch after the front-end: ids, encoder input, padding mask, lengths, reference words."""

    ids: list
    x: torch.Tensor
    pad_mask: torch.Tensor
    lens: torch.Tensor
    words: list


def cache_frontend(brain, dataset, batch_size: int = 32) -> list[CachedBatch]:
    """Features -> backbone front-end for every utterance of ``dataset`` (eval mode, no grad); ``brain`` is a
    :class:`dld_brain.selector_brain.SelectorCTCBrain` (its ``selective.backbone`` runs the layers)."""
    loader = sb.dataio.dataloader.make_dataloader(dataset, batch_size=batch_size)
    brain.modules.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(brain.device)
            feats, lens = brain.compute_features(batch, sb.Stage.TEST)
            x, pad_mask = brain.selective.backbone.embed(feats, lens)
            out.append(CachedBatch(list(batch.id), x, pad_mask, lens, [w.split() for w in batch.wrd]))
    return out


MaskFn = Callable[[CachedBatch], torch.Tensor]


def wer_with_masks(brain, cached: Sequence[CachedBatch], mask_fn: MaskFn) -> tuple[float, torch.Tensor]:
    """WER (%) when each utterance runs the layers of its row of ``mask_fn(batch)``; also returns all masks."""
    model = brain.selective.backbone
    stats = ErrorRateStats()
    all_masks = []
    with torch.no_grad():
        for cb in cached:
            masks = mask_fn(cb)
            log_probs = model.output(run_grouped(model, cb.x, cb.pad_mask, masks))
            hyps = sb.decoders.ctc_greedy_decode(log_probs, cb.lens, blank_id=brain.hparams.blank_index)
            stats.append(cb.ids, [brain.tokenizer_decode(h).split() for h in hyps], cb.words)
            all_masks.append(masks.cpu())
    return float(stats.summarize("error_rate")), torch.cat(all_masks)


def fixed(layers: Sequence[int], num_layers: int) -> MaskFn:
    """The same layer set for every utterance."""
    row = torch.zeros(num_layers)
    row[list(layers)] = 1.0
    return lambda cb: row.to(cb.x.device).expand(cb.x.shape[0], -1)


def random_layers(k: int, num_layers: int, seed: int) -> MaskFn:
    """k layers drawn uniformly at random per utterance (seeded, reproducible)."""
    generator = torch.Generator().manual_seed(seed)
    return lambda cb: topk_mask(torch.rand(cb.x.shape[0], num_layers, generator=generator), k).to(cb.x.device)


def selected(selective: SelectiveDepthModel, k: int) -> MaskFn:
    """The selector's exact top-k choice per utterance."""
    return lambda cb: selective.select(cb.x, cb.pad_mask, k)


def best_fixed_patterns(brain, cached_valid: Sequence[CachedBatch], num_layers: int) -> pd.DataFrame:
    """Validation WER of every non-empty layer pattern (2^N - 1 of them): columns k, layers, valid_WER."""
    rows = []
    for k in range(1, num_layers + 1):
        for pattern in itertools.combinations(range(num_layers), k):
            wer, _ = wer_with_masks(brain, cached_valid, fixed(pattern, num_layers))
            rows.append({"k": k, "layers": " ".join(map(str, pattern)), "valid_WER": round(wer, 2)})
    return pd.DataFrame(rows)


def compare_at_budgets(brain, selective: SelectiveDepthModel, cached_valid, cached_test,
                       random_seeds: Sequence[int] = (0, 1, 2)) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Test WER per budget k of every strategy; returns (comparison table, all patterns on valid, usage).

    The best fixed pattern at k is the one with the lowest validation WER (ties: first in lexicographic
    order); usage = fraction of test utterances for which the selector picks each layer, per k.
    """
    num_layers = selective.num_layers
    patterns = best_fixed_patterns(brain, cached_valid, num_layers)
    rows, usage = [], []
    for k in range(1, num_layers + 1):
        cand = patterns[patterns["k"] == k]
        best = [int(i) for i in cand.loc[cand["valid_WER"].idxmin(), "layers"].split()]
        sel_wer, masks = wer_with_masks(brain, cached_test, selected(selective, k))
        if not bool((masks.sum(dim=1) == k).all()):
            raise RuntimeError(f"selector ran other than {k} layers for some utterance")
        rand = [wer_with_masks(brain, cached_test, random_layers(k, num_layers, s))[0] for s in random_seeds]
        sets = masks_to_layer_sets(masks)
        rows.append({
            "k": k,
            "selector": round(sel_wer, 2),
            "random (mean)": round(statistics.mean(rand), 2),
            "random (sd)": round(statistics.stdev(rand), 2) if len(rand) > 1 else 0.0,
            "best fixed": round(wer_with_masks(brain, cached_test, fixed(best, num_layers))[0], 2),
            "best fixed layers": " ".join(map(str, best)),
            "early exit": round(wer_with_masks(brain, cached_test, fixed(range(k), num_layers))[0], 2),
            "even": round(wer_with_masks(brain, cached_test, fixed(select_layers(num_layers, k), num_layers))[0], 2),
            "selector distinct sets": len(set(sets)),
            "selector top set": " ".join(map(str, max(set(sets), key=sets.count))),
            "selector top set share": round(sets.count(max(set(sets), key=sets.count)) / len(sets), 2),
        })
        freq = masks.mean(dim=0)
        usage.append({"k": k, **{f"layer {i}": round(float(freq[i]), 3) for i in range(num_layers)}})
    return pd.DataFrame(rows), patterns, pd.DataFrame(usage)


def _median_ms(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():  # round robin: machine drifts hit every variant alike
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_selector_latency(brain, selective: SelectiveDepthModel, dataset, best_layers: dict,
                             batch_size: int = 8, repeats: int = 7) -> pd.DataFrame:
    """Median ms per budget k of: the best fixed pattern (front-end + k layers), the selector alone, and
    front-end + selector + k selected layers run grouped by layer set or masked on their union; for a batch
    of ``batch_size`` test utterances and for one utterance."""
    model = brain.selective.backbone
    brain.modules.eval()
    rows = []
    for size in (batch_size, 1):
        feats, lens = latency_batch(brain, dataset, size)
        with torch.no_grad():
            x, pad = model.embed(feats, lens)
        for k in range(1, selective.num_layers + 1):
            masks = selective.select(x, pad, k)
            def run_selected(execution, k=k):
                xx, pp = model.embed(feats, lens)
                return selective.run_masks(xx, pp, selective.select(xx, pp, k), execution)

            mixed = random_layers(k, selective.num_layers, seed=k)(CachedBatch([], x, pad, lens, []))

            def run_mixed(execution):
                xx, pp = model.embed(feats, lens)
                return selective.run_masks(xx, pp, mixed, execution)

            fns = {
                "fixed_ms": lambda: model.run_layers(*model.embed(feats, lens), layers=best_layers[k]),
                "selector_only_ms": lambda: selective.selector(x, pad, k),
                "grouped_ms": lambda: run_selected("grouped"),
                "masked_ms": lambda: run_selected("masked"),
                "random sets grouped_ms": lambda: run_mixed("grouped"),
                "random sets masked_ms": lambda: run_mixed("masked"),
            }
            ms = _median_ms(fns, repeats)
            rows.append({"batch": size, "k": k, "selector sets in batch": len(set(masks_to_layer_sets(masks))),
                         **{n: round(v, 2) for n, v in ms.items()},
                         "selector grouped / fixed": round(ms["grouped_ms"] / ms["fixed_ms"], 3),
                         "random sets in batch": len(set(masks_to_layer_sets(mixed))),
                         "union of random sets": int((mixed.sum(dim=0) > 0).sum()),
                         "random grouped / masked": round(ms["random sets grouped_ms"] / ms["random sets masked_ms"], 3)})
    return pd.DataFrame(rows)


def plot_wer_vs_k(table: pd.DataFrame, path: Path, title: str) -> None:
    """WER against the budget k, one curve per strategy (random with its seed spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["k"], table["selector"], marker="o", label="selector")
    ax.errorbar(table["k"], table["random (mean)"], yerr=table["random (sd)"], marker="s", capsize=3,
                label="random layers")
    ax.plot(table["k"], table["best fixed"], marker="^", label="best fixed pattern (valid)")
    ax.plot(table["k"], table["early exit"], marker="v", label="early exit (first k)")
    ax.plot(table["k"], table["even"], marker="x", linestyle=":", label="even policy")
    ax.set_xlabel("budget k (layers run per utterance)")
    ax.set_ylabel("test WER (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_usage(usage: pd.DataFrame, path: Path, title: str) -> None:
    """Heat map: fraction of test utterances for which the selector runs layer i, per budget k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = usage.drop(columns="k").to_numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (r, c), v in zip(itertools.product(range(values.shape[0]), range(values.shape[1])), values.flatten()):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(values.shape[1]), [str(i) for i in range(values.shape[1])])
    ax.set_yticks(range(values.shape[0]), [str(k) for k in usage["k"]])
    ax.set_xlabel("layer (0-based)")
    ax.set_ylabel("budget k")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="pick frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(folder: Path, table: pd.DataFrame, patterns: pd.DataFrame, usage: pd.DataFrame,
                  latency: Optional[pd.DataFrame], header: str) -> Path:
    """CSV + Markdown of every table, the two plots; returns the Markdown summary path."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "comparison.csv", index=False)
    patterns.to_csv(folder / "fixed_patterns_valid.csv", index=False)
    usage.to_csv(folder / "layer_usage.csv", index=False)
    parts = [header, "", "Test WER (%) per budget k:", "", markdown_table(table.astype(object)), "",
             "Selector layer usage on test (fraction of utterances running each layer):", "",
             markdown_table(usage.astype(object))]
    if latency is not None:
        latency.to_csv(folder / "latency.csv", index=False)
        parts += ["", "Latency (median ms; fixed = front-end + the best fixed pattern's k layers; grouped/masked = "
                  "front-end + selector + the k selected layers per utterance, run grouped by layer set or on the "
                  "union of the sets with 0/1 gates; random sets = k random layers per utterance, the same two "
                  "executions):", "", markdown_table(latency.astype(object))]
    md = folder / "comparison.md"
    md.write_text("\n".join(parts) + "\n")
    plot_wer_vs_k(table, folder / "wer_vs_k.png", "FSDD test: WER per layer budget")
    plot_layer_usage(usage, folder / "layer_usage.png", "Selector: layer pick frequency (test)")
    return md
