#!/usr/bin/env python3
"""Encoder latency per depth vs full depth (against the n/N ideal), and our gated lobe at full depth vs
SpeechBrain's own ConformerEncoder (same configuration, same weights), measured side by side in one run.

Usage: python benchmarks/encoder_latency.py [--layers 12 --d_model 256 --nhead 8 --d_ffn 2048
       --kernel 31 --batch 4 --seconds 10 --repeats 10 --device cpu]
Prints a table of ratios; timings are medians of round-robin repeats (every variant once per round).
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder  # noqa: E402
from speechbrain.nnet.attention import RelPosEncXL  # noqa: E402

from dld_brain.gates import select_layers  # noqa: E402
from dld_brain.lobes import GatedConformerEncoder  # noqa: E402


def describe_machine(device: str) -> str:
    """One line naming the processor / GPU, core count and torch version."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
    return (f"{name}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), device {device}")


def time_round_robin(fns: dict, repeats: int, sync) -> dict:
    """Median ms per callable, calling each once per round so drift affects all alike."""
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[key].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--nhead", type=int, default=8)
    parser.add_argument("--d_ffn", type=int, default=2048)
    parser.add_argument("--kernel", type=int, default=31)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length (40 ms frames after 4x)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--policy", default="even")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = dict(num_layers=args.layers, d_model=args.d_model, d_ffn=args.d_ffn, nhead=args.nhead,
               kernel_size=args.kernel, dropout=0.0, causal=False, attention_type="RelPosMHAXL")
    ours = GatedConformerEncoder(**cfg, drop_prob=0.5, depth_policy=args.policy).to(dev).eval()
    theirs = ConformerEncoder(**cfg).to(dev).eval()
    theirs.load_state_dict(ours.state_dict())
    frames = int(args.seconds * 25)
    x = torch.randn(args.batch, frames, args.d_model, device=dev)
    pos = RelPosEncXL(args.d_model).to(dev)(x)

    fns = {"speechbrain": lambda: theirs(x, pos_embs=pos)}
    depths = list(range(1, args.layers + 1))
    for n in depths:
        layers = select_layers(args.layers, n, policy=args.policy)
        fns[n] = (lambda layers=layers: ours(x, pos_embs=pos, layers=layers))
    with torch.inference_mode():
        ms = time_round_robin(fns, args.repeats, sync)

    print(f"machine: {describe_machine(args.device)}")
    print(f"encoder: {args.layers} layers, d_model {args.d_model}, {args.nhead} heads, FFN {args.d_ffn}, "
          f"kernel {args.kernel}; input {args.batch} x {args.seconds:.0f} s ({frames} frames); "
          f"median of {args.repeats} round-robin repeats\n")
    full = ms[args.layers]
    print("| depth n | latency ms | latency / full | ideal n/N |")
    print("| --- | --- | --- | --- |")
    for n in depths:
        print(f"| {n} | {ms[n]:.1f} | {ms[n] / full:.3f} | {n / args.layers:.3f} |")
    print(f"\ngated lobe at full depth / SpeechBrain ConformerEncoder: {full / ms['speechbrain']:.3f} "
          f"({full:.1f} ms vs {ms['speechbrain']:.1f} ms; target <= 1.05)")


if __name__ == "__main__":
    main()
