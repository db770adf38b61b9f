"""Command line: transcribe (or, with an intent classifier's bundle, classify) audio files with a trained
dynamic-depth model at a chosen depth or budget.

  python -m dld_brain.transcribe --model results/fsdd/dld/inference --depth 3 a.wav b.flac
  python -m dld_brain.transcribe --model DIR --budget-ms 15 *.wav     # deepest depth within 15 ms
  python -m dld_brain.transcribe --model DIR --profile                 # measure latency per depth
  python -m dld_brain.transcribe --model DIR --beam 20 --lexicon words.lex --lm words.arpa a.wav
  python -m dld_brain.transcribe --model DIR --beam 0 a.wav            # greedy (may emit non-words)

Decoding defaults to the bundle's decoder (the FSDD recipe's: beam 10 restricted to the digit words);
``--lexicon none`` / ``--lm none`` drop the bundle's lexicon / LM.

Prints ``<file>\\t<transcript>`` per file (``<file>\\t<label>\\t<probability>`` for a classifier); a file
that cannot be read is reported on stderr and the others are still processed (exit status 1 if any failed).
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    parser = argparse.ArgumentParser(prog="python -m dld_brain.transcribe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="audio files (wav, flac, ...; any sample rate, mono or stereo)")
    parser.add_argument("--model", required=True, help="inference bundle folder (<run>/inference)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--depth", type=int, help="number of encoder layers to run (default: all)")
    group.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")],
                       help="explicit 0-based layer list, e.g. 0,3,5")
    group.add_argument("--budget-ms", type=float, dest="budget_ms",
                       help="deepest depth whose profiled encoder latency fits (run --profile once first)")
    group.add_argument("--max-params", type=int, dest="max_params",
                       help="deepest depth whose executed encoder parameters fit")
    parser.add_argument("--profile", action="store_true", help="measure latency per depth and save it")
    parser.add_argument("--beam", type=int, help="beam size (0 = greedy; default: the bundle's decoder)")
    parser.add_argument("--lexicon", help="lexicon file ('WORD tok tok ...' per line) restricting the output to "
                        "its words; 'none' drops the bundle's lexicon")
    parser.add_argument("--lm", help="KenLM n-gram (.arpa or .bin) for beam search; 'none' drops the bundle's")
    parser.add_argument("--lm-weight", type=float, dest="lm_weight", help="LM weight (default: the bundle's)")
    parser.add_argument("--word-score", type=float, dest="word_score", help="score added per word")
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv=None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    from dld_brain.decoding import DecoderConfigError
    from dld_brain.gates import DepthError
    from dld_brain.inference import BudgetError, DynamicDepthClassifier, InferenceInputError, load_bundle

    try:
        asr = load_bundle(args.model, run_opts={"device": args.device})
    except InferenceInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not isinstance(asr, DynamicDepthClassifier):
        none = lambda v: None if v is not None and v.lower() == "none" else v  # noqa: E731
        changes = {"beam_size": args.beam, "lexicon": none(args.lexicon), "lm": none(args.lm),
                   "lm_weight": args.lm_weight, "word_score": args.word_score}
        changes = {k: v for k, v in changes.items() if v is not None or (k in ("lexicon", "lm") and
                                                                          getattr(args, k) is not None)}
        try:
            if changes:
                asr.set_decoder(**changes)
        except DecoderConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.profile:
        for row in asr.profile()["depths"]:
            print(f"depth {row['depth']}: {row['latency_ms']:.2f} ms, {row['encoder_params']} encoder parameters")
    options = {"depth": args.depth, "layers": args.layers, "max_latency_ms": args.budget_ms,
               "max_params": args.max_params}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        layers = asr.layers_for(**options)
    except (DepthError, BudgetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.files:
        decoding = "" if isinstance(asr, DynamicDepthClassifier) else f", {asr.decoder.describe()}"
        print(f"# {len(layers)} of {asr.num_layers} layers: {layers}{decoding}", file=sys.stderr)
    failed = 0
    for path in tqdm(args.files, disable=len(args.files) < 5, file=sys.stderr, unit="file"):
        try:
            if isinstance(asr, DynamicDepthClassifier):
                label, prob = asr.classify_file(path, layers=layers)
                text = f"{label}\t{prob:.3f}"
            else:
                text = asr.transcribe_file(path, layers=layers)
        except InferenceInputError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}\t{text}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
