#!/usr/bin/env python3
"""WER and cost of greedy, beam and lexicon-constrained beam decoding per depth, for one inference bundle
on one manifest (the posteriors are computed once per depth and decoded three ways).

Usage: python benchmarks/decoding.py --model results/fsdd/dld/inference --csv results/fsdd/prepared/test.csv
       [--beam 10] [--lexicon FILE (default: the bundle's)] [--batch 8]
Prints a Markdown table: WER (%) per decoder and depth, encoder ms and decoding ms per batch (medians).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from speechbrain.utils.metric_stats import ErrorRateStats  # noqa: E402

from dld_brain.inference import DynamicDepthASR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--csv", required=True, help="manifest with wav and wrd columns")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--lexicon", help="lexicon file (default: the bundle's)")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    asr = DynamicDepthASR.from_hparams(source=args.model)
    lexicon = args.lexicon or asr.decoder.lexicon
    if lexicon is None:
        sys.exit(f"{args.model}: the bundle has no lexicon; give --lexicon")
    decoders = {"greedy": asr.make_decoder(beam_size=0),
                f"beam {args.beam}": asr.make_decoder(beam_size=args.beam, lexicon=None, lm=None),
                f"beam {args.beam} + lexicon": asr.make_decoder(beam_size=args.beam, lexicon=lexicon, lm=None)}
    table = pd.read_csv(args.csv)
    rows = []
    start = time.time()
    for depth in range(1, asr.num_layers + 1):
        stats = {name: ErrorRateStats() for name in decoders}
        cost = {name: [] for name in ["encoder", *decoders]}
        for i, (wavs, lens) in enumerate(asr.padded_batches(table["wav"].tolist(), args.batch)):
            ids = table["ID"].iloc[i * args.batch: i * args.batch + len(wavs)].tolist()
            refs = [str(w).split() for w in table["wrd"].iloc[i * args.batch: i * args.batch + len(wavs)]]
            t0 = time.perf_counter()
            log_probs = asr._log_probs(wavs, lens, depth=depth)
            cost["encoder"].append((time.perf_counter() - t0) * 1000)
            for name, decoder in decoders.items():
                t0 = time.perf_counter()
                words = decoder.decode(log_probs, lens)[0]
                cost[name].append((time.perf_counter() - t0) * 1000)
                stats[name].append(ids, [w.split() for w in words], refs)
        row = {"depth": str(depth)}
        row.update({f"WER {name}": round(s.summarize("error_rate"), 2) for name, s in stats.items()})
        row.update({f"ms {name}": round(statistics.median(t), 2) for name, t in cost.items()})
        rows.append(row)
    out = pd.DataFrame(rows)
    cols = list(out.columns)
    print("| " + " | ".join(cols) + " |\n|" + "|".join(" --- " for _ in cols) + "|")
    for _, r in out.iterrows():
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\n{len(table)} utterances, batch {args.batch}, ms = median per batch (features + features-to-"
          f"posteriors for 'encoder'); {time.time() - start:.0f} s wall, torch {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
