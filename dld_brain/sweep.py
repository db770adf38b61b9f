"""Depth-sweep evaluation: WER, executed parameters and measured encoder latency at every depth.

For each test set and depth n the trained model is evaluated with ``n`` layers chosen by the encoder's
depth policy; results go to ``depth_sweep_<set>.csv`` / ``.md`` and ``wer_<set>_n<k>.txt`` (SpeechBrain's
per-utterance WER details) in the output folder. With a beam-search ``decoder`` (:mod:`dld_brain.decoding`)
every depth is scored with greedy decoding (``WER``) and with the decoder (``WER_beam``,
``wer_<set>_n<k>_beam.txt``), and the decoding cost is measured next to the encoder's on the same batch
(``greedy_decode_ms``, ``beam_decode_ms``: median ms for the batch's log-probabilities, CPU search).

Under DDP (torchrun) the sweep runs once, on the main process, with the modules taken out of their DDP
wrappers; the other ranks wait at a barrier and receive the table (see :func:`on_main_process`). The latency
is measured on a batch of median-length test utterances (:func:`latency_batch`), after warm-up, with CUDA
synchronisation on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import pandas as pd
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.distributed import run_on_main

from dld_brain.lobes.conformer import executed_parameters

logger = logging.getLogger(__name__)

SWEEP_COLUMNS = ["method", "test_set", "depth", "layers", "WER", "encoder_params", "total_params",
                 "encoder_latency_ms", "latency_ratio", "ideal_ratio",
                 # test references with units the tokenizer lacks (scored, those words are errors) and with
                 # unreadable audio (scored as empty hypotheses); see dld_brain.validation.split_test_rows
                 "refs_outside_tokenizer", "refs_unreadable"]


def measure_encoder_latency(
    model: torch.nn.Module,
    feats: torch.Tensor,
    lens: torch.Tensor,
    layer_sets: Sequence[Sequence[int]],
    repeats: int = 5,
    warmup: int = 2,
) -> list[float]:
    """Median wall-clock ms of ``model.encode`` for each layer set, measured round-robin on one batch.

    ``warmup`` untimed rounds over every set come first (allocator, kernel selection, caches). Round-robin (all
    sets once per repeat) keeps slow drifts of the machine from favouring one depth. On a GPU the device is
    synchronised before the clock starts and before it is read, so the asynchronous kernels are timed.
    """
    sync = torch.cuda.synchronize if feats.is_cuda else (lambda: None)
    times: list[list[float]] = [[] for _ in layer_sets]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            for layers in layer_sets:
                model.encode(feats, lens, layers=layers)
        for _ in range(repeats):
            for i, layers in enumerate(layer_sets):
                sync()
                start = time.perf_counter()
                model.encode(feats, lens, layers=layers)
                sync()
                times[i].append((time.perf_counter() - start) * 1000.0)
    model.train(was_training)
    return [statistics.median(t) for t in times]


def median_length_indices(durations: Sequence[float], size: int) -> list[int]:
    """Positions of the ``size`` utterances in the middle of the duration order (around the median).

    Test sets are usually sorted by duration, so their first utterances are the shortest, where the fixed cost
    of the front-end dominates the encoder's time; latency per depth is measured on typical lengths instead.
    """
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    size = min(size, len(order))
    start = max(0, min(len(order) - size, len(order) // 2 - size // 2))
    return sorted(order[start:start + size])


def utterance_durations(dataset) -> list[float]:
    """Durations (s) of ``dataset``'s utterances in its order: the manifest's ``duration`` column, else the length
    of each loaded ``sig`` in samples (any unit works for ordering)."""
    data, ids = getattr(dataset, "data", None), getattr(dataset, "data_ids", None)
    if data is not None and ids is not None and all("duration" in data[i] for i in ids):
        return [float(data[i]["duration"]) for i in ids]
    return [float(len(dataset[i]["sig"])) for i in range(len(dataset))]
def measure_decoding_latency(
    model: torch.nn.Module,
    feats: torch.Tensor,
    lens: torch.Tensor,
    layer_sets: Sequence[Sequence[int]],
    decoders: Sequence,
    repeats: int = 5,
) -> list[list[float]]:
    """Median wall-clock ms of each decoder (``decode_tokens(log_probs, lens)``) on the model's
    log-probabilities at each layer set: one list per layer set, one value per decoder. The posteriors
    change with depth, and so does the search (a sharper posterior prunes more)."""
    out = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for layers in layer_sets:
            log_probs = model(feats, lens, layers=layers)
            row = []
            for decoder in decoders:
                decoder.decode_tokens(log_probs, lens)  # warm-up (builds the search once)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    decoder.decode_tokens(log_probs, lens)
                    times.append((time.perf_counter() - start) * 1000.0)
                row.append(statistics.median(times))
            out.append(row)
    model.train(was_training)
    return out


def latency_batch(brain, dataset, size: int = 8):
    """Features of the ``size`` median-length utterances of ``dataset`` (:func:`median_length_indices`), as
    (feats, lens) on the brain's device."""
    items = [dataset[i] for i in median_length_indices(utterance_durations(dataset), size)]
    batch = PaddedBatch(items).to(brain.device)
    with torch.no_grad():
        return brain.compute_features(batch, sb.Stage.TEST)


@contextlib.contextmanager
def unwrapped_ddp(modules: torch.nn.ModuleDict) -> Iterator[None]:
    """Inside the context, every DDP-wrapped module in ``modules`` is replaced by the module it wraps, so that
    one process alone can run forward passes (a DDP forward may start collective buffer synchronisation, which
    would wait forever for the other ranks); the wrappers are put back afterwards."""
    wrapped = {name: module for name, module in modules.items()
               if isinstance(module, torch.nn.parallel.DistributedDataParallel)}
    try:
        for name, module in wrapped.items():
            modules[name] = module.module
        yield
    finally:
        for name, module in wrapped.items():
            modules[name] = module


def on_main_process(evaluate: Callable) -> Callable:
    """Decorator for an evaluation ``evaluate(brain, ...)``: under DDP it runs once, on the main process, with the
    brain's modules unwrapped (:func:`unwrapped_ddp`); the other ranks wait at a barrier and get its return value
    (SpeechBrain's ``run_on_main``: nested SpeechBrain collectives are skipped). Without DDP it just runs."""

    @functools.wraps(evaluate)
    def wrapper(brain, *args, **kwargs):
        with unwrapped_ddp(brain.modules):
            return run_on_main(evaluate, args=[brain, *args], kwargs=kwargs)

    return wrapper


def sweep_depths(num_layers: int, depths: Optional[Iterable[int]]) -> list[int]:
    """The depths to evaluate: the given list, else 1..N."""
    return sorted(set(int(d) for d in depths)) if depths else list(range(1, num_layers + 1))


@on_main_process
def depth_sweep(
    brain,
    test_sets: dict,
    output_folder: str | Path,
    method: str,
    depths: Optional[Iterable[int]] = None,
    policy: Optional[str] = None,
    loader_kwargs: Optional[dict] = None,
    latency_repeats: int = 5,
    min_key: Optional[str] = "WER",
    tag: str = "",
    metric: str = "WER",
    max_key: Optional[str] = None,
    decoder=None,
) -> pd.DataFrame:
    """Evaluate ``brain`` (best checkpoint by ``min_key``, or ``max_key``) at every depth on every test set;
    write the outputs. ``metric`` is the key of ``brain.test_stats`` reported (WER, or e.g. accuracy).

    ``tag`` is appended to every file name (e.g. ``_ep25`` when evaluating epoch 25's checkpoint).
    ``decoder``: a :class:`dld_brain.decoding.CTCDecoder` scored next to greedy decoding (``WER_beam``).
    Returns the concatenated sweep table (one row per set and depth). Under DDP it runs on the main process
    only and every rank gets the table (:func:`on_main_process`).
    """
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    model = brain.model  # unwrapped from DDP
    encoder = model.encoder
    depth_list = sweep_depths(encoder.num_layers, depths)
    layer_sets = [encoder.set_depth(d, policy=policy) for d in depth_list]
    encoder.set_depth(None)
    beam = decoder is not None and not decoder.is_greedy
    brain.beam_decoder = decoder if beam else None
    if beam:
        logger.info("%s: scoring greedy and %s decoding", method, decoder.describe())
    frames = []
    for set_name, dataset in test_sets.items():
        rows = []
        for depth, layers in zip(depth_list, layer_sets):
            brain.wer_file = output_folder / f"{metric.lower()}_{set_name}_n{depth}{tag}.txt"
            with encoder.at_depth(layers=layers):
                brain.evaluate(dataset, min_key=None if max_key else min_key, max_key=max_key,
                               test_loader_kwargs=loader_kwargs or {})
            params = executed_parameters(model, layers)
            rows.append({"method": method, "test_set": set_name, "depth": depth,
                         "layers": " ".join(str(i) for i in layers),
                         metric: round(brain.test_stats[metric], 2),
                         **({"WER_beam": round(brain.test_stats["WER_beam"], 2)} if beam else {}),
                         "encoder_params": params["encoder"], "total_params": params["total"],
                         "refs_outside_tokenizer": len(getattr(dataset, "outside_tokenizer", ())),
                         "refs_unreadable": len(getattr(dataset, "unreadable_refs", ()))})
            logger.info("%s %s depth %d (layers %s): %s %.2f", method, set_name, depth, layers, metric,
                        brain.test_stats[metric])
        brain.wer_file = None
        feats, lens = latency_batch(brain, dataset)
        latencies = measure_encoder_latency(model, feats, lens, layer_sets, repeats=latency_repeats)
        full = latencies[-1] if depth_list[-1] == encoder.num_layers else None
        for row, lat in zip(rows, latencies):
            row["encoder_latency_ms"] = round(lat, 2)
            row["latency_ratio"] = round(lat / full, 3) if full else None
            row["ideal_ratio"] = round(row["depth"] / encoder.num_layers, 3)
        columns = [metric if c == "WER" else c for c in SWEEP_COLUMNS]
        if beam:
            from dld_brain.decoding import CTCDecoder

            greedy = CTCDecoder(decoder.tokenizer, blank_index=decoder.blank_index, beam_size=0)
            costs = measure_decoding_latency(model, feats, lens, layer_sets, [greedy, decoder],
                                             repeats=latency_repeats)
            for row, (greedy_ms, beam_ms) in zip(rows, costs):
                row["greedy_decode_ms"], row["beam_decode_ms"] = round(greedy_ms, 2), round(beam_ms, 2)
            columns = columns[:5] + ["WER_beam"] + columns[5:] + ["greedy_decode_ms", "beam_decode_ms"]
        table = pd.DataFrame(rows, columns=columns)
        if sb.utils.distributed.if_main_process():
            table.to_csv(output_folder / f"depth_sweep_{set_name}{tag}.csv", index=False)
            (output_folder / f"depth_sweep_{set_name}{tag}.md").write_text(markdown_table(table) + "\n")
        frames.append(table)
    brain.beam_decoder = None
    return pd.concat(frames, ignore_index=True)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of a DataFrame (no extra dependency)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(row[c]) else str(row[c]) for c in cols) + " |")
    return "\n".join(lines)
