#!/usr/bin/env python3
"""The edge artifact (one folder, any depth at run time) vs today's per-depth ONNX graphs vs PyTorch eager,
side by side in one run: size on disk, latency per depth (fp32 and int8), WER per depth and whether the
transcripts equal PyTorch's.

Usage: python benchmarks/edge_latency.py --model results/fsdd/dld/inference --test_csv results/fsdd/prepared/test.csv
       [--seconds 5] [--repeats 20] [--threads 1] [--max_utts 0]
Latency: encoder + CTC head on the same normalised filterbanks of ``--seconds`` of real test audio
(concatenated utterances), median of round-robin repeats (every runtime once per round). WER: greedy CTC on
every test utterance (``--max_utts`` to cap), one file at a time, features computed by each path itself
(SpeechBrain for PyTorch and the per-depth graphs, NumPy for the edge artifact).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def word_errors(ref: str, hyp: str) -> int:
    """Word-level Levenshtein distance."""
    r, h = ref.split(), hyp.split()
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[-1]


def folder_size(folder: Path, pattern: str = "*") -> int:
    return sum(f.stat().st_size for f in folder.glob(pattern) if f.is_file())


def main() -> None:
    import onnxruntime as ort
    import pandas as pd
    import speechbrain as sb

    from benchmarks.encoder_latency import describe_machine
    from dld_brain.edge import EdgeASR
    from dld_brain.export import export_edge, export_onnx, lexicon_words, quantize_edge
    from dld_brain.inference import DynamicDepthASR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="inference bundle of a trained conformer CTC model")
    parser.add_argument("--test_csv", required=True, help="manifest with wav and wrd columns")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max_utts", type=int, default=0, help="cap on test utterances for WER (0: all)")
    parser.add_argument("--lexicon", help="word list or manifest for the lexicon decoder (default: train.csv "
                        "beside --test_csv)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    asr = DynamicDepthASR.from_hparams(source=args.model)
    model = asr.mods.model.eval()
    num_layers = model.encoder.num_layers
    table = pd.read_csv(args.test_csv)
    if args.max_utts:
        table = table.iloc[: args.max_utts]
    sp = asr.hparams.tokenizer
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        per_depth = {}
        for depth in range(1, num_layers + 1):
            path = export_onnx(model, asr.layers_for(depth=depth), tmp / f"encoder_ctc_n{depth}.onnx",
                               model.config["n_mels"])
            per_depth[depth] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        lexicon = lexicon_words(args.lexicon or Path(args.test_csv).with_name("train.csv"))
        edge_dir = export_edge(model, asr.hparams.compute_features, asr.mods.normalize, pieces, tmp / "edge",
                               asr.hparams.blank_index, lexicon)
        quantize_edge(edge_dir, tmp / "edge_int8")
        quantize_edge(edge_dir, tmp / "edge_int8_conv", ops=None)  # convolutions quantised too
        export_s = time.perf_counter() - start
        edge = {"fp32": EdgeASR(edge_dir, threads=args.threads),
                "int8": EdgeASR(tmp / "edge_int8", threads=args.threads),
                "int8_conv": EdgeASR(tmp / "edge_int8_conv", threads=args.threads)}
        sizes = {"per-depth graphs (all depths)": folder_size(tmp, "encoder_ctc_n*.onnx"),
                 "edge artifact fp32": folder_size(edge_dir), "edge artifact int8": folder_size(tmp / "edge_int8"),
                 "edge artifact int8, convolutions too": folder_size(tmp / "edge_int8_conv")}

        # ---- latency: same features into every runtime
        sig, wavs = [], table["wav"].tolist()
        while sum(s.size for s in sig) < args.seconds * asr.hparams.sample_rate:
            sig.append(edge["fp32"].read_audio(wavs[len(sig) % len(wavs)]))
        sig = np.concatenate(sig)[: int(args.seconds * asr.hparams.sample_rate)]
        feats_np = edge["fp32"].features(sig)
        feats = torch.from_numpy(feats_np)
        lens = torch.ones(1)
        rows = []
        with torch.inference_mode():
            for depth in range(1, num_layers + 1):
                layers = asr.layers_for(depth=depth)
                fns = {"torch": lambda: model(feats, lens, layers=layers),
                       "per_depth": lambda: per_depth[depth].run(None, {"feats": feats_np, "wav_lens": lens.numpy()}),
                       "fp32": lambda: edge["fp32"].log_probs(feats_np, depth=depth),
                       "int8": lambda: edge["int8"].log_probs(feats_np, depth=depth),
                       "int8_conv": lambda: edge["int8_conv"].log_probs(feats_np, depth=depth)}
                for fn in fns.values():
                    fn()
                samples = {k: [] for k in fns}
                for _ in range(args.repeats):
                    for key, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        samples[key].append((time.perf_counter() - t0) * 1000)
                rows.append((depth, {k: statistics.median(v) for k, v in samples.items()}))
        feat_ms = statistics.median(
            [(lambda t0: (edge["fp32"].features(sig), (time.perf_counter() - t0) * 1000)[1])(time.perf_counter())
             for _ in range(args.repeats)])
        with torch.inference_mode():
            sb_ms = statistics.median(
                [(lambda t0: (asr._features(torch.from_numpy(sig)[None], lens), (time.perf_counter() - t0) * 1000)[1])(
                    time.perf_counter()) for _ in range(args.repeats)])

        # ---- WER and transcript equality on every test utterance
        words = sum(len(w.split()) for w in table["wrd"])
        wer = []
        for depth in range(1, num_layers + 1):
            errors = {"torch": 0, "per_depth": 0, "fp32": 0, "int8": 0, "lexicon": 0}
            same = {"per_depth": 0, "fp32": 0, "int8": 0}
            for wav, ref in zip(table["wav"], table["wrd"]):
                audio = edge["fp32"].read_audio(wav)
                with torch.no_grad():
                    t_feats = asr._features(torch.from_numpy(audio)[None], lens)
                hyps = {"torch": asr.transcribe_file(wav, depth=depth)}
                feed = {"feats": t_feats.numpy(), "wav_lens": lens.numpy()}
                lp = torch.from_numpy(per_depth[depth].run(None, feed)[0])
                best = sb.decoders.ctc_greedy_decode(lp, lens, blank_id=asr.hparams.blank_index)[0]
                hyps["per_depth"] = sp.decode_ids([int(i) for i in best])
                for kind in ("fp32", "int8"):
                    hyps[kind] = edge[kind].transcribe_file(wav, depth=depth)
                hyps["lexicon"] = edge["fp32"].transcribe_file(wav, depth=depth, decoder="lexicon")
                for key, hyp in hyps.items():
                    errors[key] += word_errors(ref, hyp)
                for key in same:
                    same[key] += hyps[key] == hyps["torch"]
            wer.append((depth, {k: 100 * v / words for k, v in errors.items()}, same))

    print(f"machine: {describe_machine('cpu')}; onnxruntime {ort.__version__}; {args.threads} thread(s)")
    print(f"model: {args.model} ({num_layers} layers, d_model {model.config['d_model']}); "
          f"export + int8: {export_s:.0f} s")
    print(f"latency input: {args.seconds:.0f} s of real test audio, batch 1; median of {args.repeats} round-robin "
          f"repeats; features: NumPy {feat_ms:.1f} ms, SpeechBrain {sb_ms:.1f} ms (not in the table)\n")
    print("| on disk | bytes | vs per-depth graphs |\n| --- | --- | --- |")
    base = sizes["per-depth graphs (all depths)"]
    for name, size in sizes.items():
        print(f"| {name} | {size:,} | {size / base:.2f} |")
    print("\n| depth | PyTorch ms | per-depth ONNX ms | edge fp32 ms | edge int8 ms | edge fp32 / per-depth | "
          "edge fp32 / PyTorch | int8 / fp32 | int8 with conv / fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for depth, t in rows:
        print(f"| {depth} | {t['torch']:.1f} | {t['per_depth']:.1f} | {t['fp32']:.1f} | {t['int8']:.1f} | "
              f"{t['fp32'] / t['per_depth']:.2f} | {t['fp32'] / t['torch']:.2f} | {t['int8'] / t['fp32']:.2f} | "
              f"{t['int8_conv'] / t['fp32']:.2f} |")
    n = len(table)
    print(f"\nWER % on {n} test utterances ({words} words), greedy unless said; 'same' = transcripts equal "
          f"to PyTorch's; lexicon: {len(lexicon)} words\n")
    print("| depth | PyTorch | per-depth ONNX | edge fp32 | edge int8 | edge fp32 + lexicon | same: per-depth | "
          "same: fp32 | same: int8 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for depth, w, same in wer:
        print(f"| {depth} | {w['torch']:.2f} | {w['per_depth']:.2f} | {w['fp32']:.2f} | {w['int8']:.2f} | "
              f"{w['lexicon']:.2f} | {same['per_depth']}/{n} | {same['fp32']}/{n} | {same['int8']}/{n} |")


if __name__ == "__main__":
    main()
