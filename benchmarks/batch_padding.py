#!/usr/bin/env python3
"""Padding of random fixed-size batches vs SpeechBrain's duration-bucketed DynamicBatchSampler, side by side,
on a manifest's durations (the padded share of the audio a batch computes on).

Usage: python benchmarks/batch_padding.py [--csv results/speech_to_intent/prepared/train.csv]
       [--batch_size 16] [--max_batch_length 60] [--num_buckets 10] [--max_batch_ex 32] [--max_duration 8]
       [--epochs 20]
Defaults are hparams/slu/base.yaml's (run the coffee-order recipe once to write the manifest).
"""

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from speechbrain.dataio.dataset import DynamicItemDataset  # noqa: E402
from speechbrain.dataio.sampler import DynamicBatchSampler  # noqa: E402


def padded_share(batches) -> float:
    """Padded seconds / computed seconds (each batch computes len * longest)."""
    computed = sum(max(b) * len(b) for b in batches)
    return (computed - sum(sum(b) for b in batches)) / computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default="results/speech_to_intent/prepared/train.csv")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_batch_length", type=float, default=60)
    parser.add_argument("--num_buckets", type=int, default=10)
    parser.add_argument("--max_batch_ex", type=int, default=32)
    parser.add_argument("--max_duration", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=20, help="shuffled epochs averaged")
    args = parser.parse_args()
    durations = [float(d) for d in pd.read_csv(args.csv)["duration"] if float(d) <= args.max_duration]

    rng = random.Random(0)
    fixed = []
    for _ in range(args.epochs):
        order = durations[:]
        rng.shuffle(order)
        fixed += [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    data = DynamicItemDataset({str(i): {"duration": d} for i, d in enumerate(durations)})
    data.set_output_keys(["id", "duration"])
    sampler = DynamicBatchSampler(data, max_batch_length=args.max_batch_length, num_buckets=args.num_buckets,
                                  length_func=lambda x: float(x["duration"]), shuffle=True,
                                  batch_ordering="random", max_batch_ex=args.max_batch_ex)
    bucketed = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        bucketed += [[durations[int(i)] for i in batch] for batch in sampler]

    print(f"{len(durations)} utterances of {args.csv} (<= {args.max_duration} s), {args.epochs} epochs\n")
    print("| batching | batches / epoch | padded share of computed audio |")
    print("| --- | --- | --- |")
    print(f"| random, {args.batch_size} per batch | {len(fixed) / args.epochs:.1f} | {100 * padded_share(fixed):.1f} % |")
    print(f"| duration buckets, ~{args.max_batch_length:g} s per batch | {len(bucketed) / args.epochs:.1f} | "
          f"{100 * padded_share(bucketed):.1f} % |")


if __name__ == "__main__":
    main()
