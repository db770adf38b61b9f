#!/usr/bin/env python3
"""Exported ONNX (onnxruntime) vs PyTorch for the encoder + CTC head at every depth, side by side.

Usage: python benchmarks/onnx_latency.py [--small] [--batch 1] [--seconds 5] [--repeats 10]
Random weights (latency does not depend on them); both runtimes use the same number of threads.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.encoder_latency import describe_machine  # noqa: E402
from benchmarks.train_step import config  # noqa: E402
from dld_brain.export import export_onnx  # noqa: E402
from dld_brain.gates import select_layers  # noqa: E402
from dld_brain.lobes import ConformerCTC  # noqa: E402


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    cfg = config(args.small)
    torch.manual_seed(0)
    model = ConformerCTC(**cfg).eval()
    feats = torch.randn(args.batch, int(args.seconds * 100), cfg["n_mels"])
    lens = torch.ones(args.batch)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    depths = list(range(1, cfg["num_layers"] + 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in depths:
            layers = select_layers(cfg["num_layers"], depth)
            session = ort.InferenceSession(str(export_onnx(model, layers, Path(tmp) / f"n{depth}.onnx",
                                                           cfg["n_mels"])), options)
            feed = {"feats": feats.numpy(), "wav_lens": lens.numpy()}
            fns = {"torch": lambda: model(feats, lens, layers=layers), "onnx": lambda: session.run(None, feed)}
            samples = {k: [] for k in fns}
            with torch.inference_mode():
                for fn in fns.values():
                    fn()
                for _ in range(args.repeats):
                    for key, fn in fns.items():
                        start = time.perf_counter()
                        fn()
                        samples[key].append((time.perf_counter() - start) * 1000)
            rows.append((depth, statistics.median(samples["torch"]), statistics.median(samples["onnx"])))
    print(f"machine: {describe_machine('cpu')}; onnxruntime {ort.__version__}")
    print(f"model: {cfg['num_layers']} layers, d_model {cfg['d_model']}; input {args.batch} x "
          f"{args.seconds:.0f} s; median of {args.repeats} round-robin repeats\n")
    print("| depth | PyTorch ms | ONNX Runtime ms | ONNX / PyTorch | ONNX depth / ONNX full |")
    print("| --- | --- | --- | --- | --- |")
    full = rows[-1][2]
    for depth, t, o in rows:
        print(f"| {depth} | {t:.1f} | {o:.1f} | {o / t:.2f} | {o / full:.3f} |")


if __name__ == "__main__":
    main()
