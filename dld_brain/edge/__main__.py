"""``python -m dld_brain.edge --model DIR --depth 3 a.wav b.wav``: transcribe with an edge artifact (numpy,
soundfile and onnxruntime only; no torch). One ``path<TAB>transcript`` line per file on stdout."""

from __future__ import annotations

import argparse
import sys

from dld_brain.edge.runner import EdgeASR, EdgeInputError, read_lexicon


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dld_brain.edge", description=__doc__)
    parser.add_argument("--model", required=True, help="edge artifact folder (python -m dld_brain.export --edge)")
    parser.add_argument("--depth", type=int, help="number of layers to run (default: all)")
    parser.add_argument("--layers", type=int, nargs="+", help="explicit 0-based layers (instead of --depth)")
    parser.add_argument("--decoder", choices=["greedy", "lexicon"], default="greedy")
    parser.add_argument("--lexicon", help="word list for --decoder lexicon (default: the artifact's lexicon.txt)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    parser.add_argument("wavs", nargs="+")
    args = parser.parse_args(argv)
    try:
        words = read_lexicon(args.lexicon) if args.lexicon else None
        asr = EdgeASR(args.model, threads=args.threads, lexicon=words)
        run = asr.layers_for(args.depth, args.layers)
    except EdgeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: {len(run)} of {asr.num_layers} layers {run}, decoder {args.decoder}", file=sys.stderr)
    status = 0
    for wav in args.wavs:
        try:
            print(f"{wav}\t{asr.transcribe_file(wav, layers=run, decoder=args.decoder)}", flush=True)
        except EdgeInputError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
