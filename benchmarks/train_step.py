#!/usr/bin/env python3
"""One training step (forward + backward + AdamW) of static, RDsc, RDLD and DLD training, measured side by
side in one run, with the peak memory of each; plus our gated encoder against SpeechBrain's
ConformerEncoder with its built-in ``layerdrop_prob`` at the same drop rate.

RDsc and RDLD have the same step (they differ only in initialisation); DLD adds the frozen teacher's
forward pass and the KL term. With drop_prob 0.5, a random step runs about half the layers, so the
timings are medians over many steps (the gates are drawn from the same seed for every variant).
Usage: python benchmarks/train_step.py [--small] [--steps 12] [--device cpu|cuda] [--precision bf16]
       [--family conformer|wavlm]   (wavlm: WavLM Base+-shaped, or --small the FSDD one, randomly
       initialised; the reference encoder is transformers' WavLMModel with its own layerdrop 0.5)
"""

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder  # noqa: E402
from speechbrain.nnet.attention import RelPosEncXL  # noqa: E402

from benchmarks.encoder_latency import describe_machine, time_round_robin  # noqa: E402
from dld_brain.lobes import ConformerCTC, WavLMCTC  # noqa: E402
from dld_brain.losses import ctc_posterior_kl  # noqa: E402

VARIANTS = ("static", "rdsc/rdld", "dld")


#: WavLM shapes: Base+ (94.7 M parameters with the conv feature encoder) and the FSDD from-scratch one at 16 kHz
WAVLM_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
WAVLM_SMALL = dict(hidden_size=144, num_hidden_layers=6, num_attention_heads=4, intermediate_size=576,
                   conv_dim=[32, 32, 64, 64, 64, 64], conv_stride=[5, 4, 4, 2, 2, 2], conv_kernel=[10, 8, 8, 4, 4, 2],
                   feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=32,
                   num_conv_pos_embedding_groups=8, num_buckets=64, max_bucket_distance=128)


def build_model(cfg: dict, drop: float) -> torch.nn.Module:
    """A ConformerCTC or (``cfg['family'] == 'wavlm'``) a randomly initialised WavLMCTC."""
    cfg = dict(cfg)
    if cfg.pop("family", "conformer") == "wavlm":
        return WavLMCTC(vocab_size=cfg["vocab_size"], config=cfg["wavlm"], config_overrides={"mask_time_prob": 0.0},
                        freeze_feature_encoder=cfg["freeze_feature_encoder"], drop_prob=drop, gate_seed=0)
    return ConformerCTC(**cfg, drop_prob=drop, gate_seed=0, dropout=0.1)


def config(small: bool, family: str = "conformer") -> dict:
    """Paper size (31.9 M parameters) or a small CPU-friendly one; WavLM Base+ or the FSDD WavLM."""
    if family == "wavlm":
        return dict(family="wavlm", vocab_size=32, wavlm=WAVLM_SMALL if small else WAVLM_BASE,
                    freeze_feature_encoder=not small)
    if small:
        return dict(n_mels=40, vocab_size=32, d_model=144, num_layers=6, nhead=4, d_ffn=576, kernel_size=15)
    return dict(n_mels=80, vocab_size=256, d_model=256, num_layers=12, nhead=8, d_ffn=2048, kernel_size=31)


def make_batch(cfg: dict, batch: int, seconds: float, device):
    if cfg.get("family") == "wavlm":  # raw 16 kHz waveforms
        wavs = torch.randn(batch, int(seconds * 16000), device=device)
        targets = torch.randint(1, cfg["vocab_size"], (batch, int(seconds * 3)), device=device)
        return wavs, torch.ones(batch, device=device), targets
    frames = int(seconds * 100)
    feats = torch.randn(batch, frames, cfg["n_mels"], device=device)
    lens = torch.ones(batch, device=device)
    targets = torch.randint(1, cfg["vocab_size"], (batch, int(seconds * 3)), device=device)
    return feats, lens, targets


def make_step(variant: str, cfg: dict, device, autocast):
    """A closure running one optimisation step of ``variant`` on a batch."""
    torch.manual_seed(0)
    drop = 0.0 if variant == "static" else 0.5
    student = build_model(cfg, drop).to(device).train()
    teacher = None
    if variant == "dld":
        teacher = copy.deepcopy(student).eval().requires_grad_(False)
        teacher.encoder.gate_sampler.drop_prob = 0.0
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def step(feats, lens, targets):
        with autocast():
            log_probs = student(feats, lens)
            loss = torch.nn.functional.ctc_loss(
                log_probs.transpose(0, 1), targets, torch.full((feats.shape[0],), log_probs.shape[1]),
                torch.full((feats.shape[0],), targets.shape[1]), blank=0, zero_infinity=True)
            if teacher is not None:
                with torch.no_grad():
                    t_log_probs = teacher(feats, lens)
                loss = loss + ctc_posterior_kl(log_probs, t_log_probs, lens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def encoder_steps(cfg: dict, device):
    """fwd+bwd of the bare encoders at drop rate 0.5: ours (gated) vs SpeechBrain's layerdrop_prob (conformer)
    or transformers' own WavLM ``layerdrop`` (wavlm)."""
    from dld_brain.lobes import GatedConformerEncoder

    if cfg.get("family") == "wavlm":
        return wavlm_encoder_steps(cfg, device)

    kw = dict(num_layers=cfg["num_layers"], d_model=cfg["d_model"], d_ffn=cfg["d_ffn"], nhead=cfg["nhead"],
              kernel_size=cfg["kernel_size"], dropout=0.1, causal=False)
    ours = GatedConformerEncoder(**kw, drop_prob=0.5, gate_seed=0).to(device).train()
    theirs = ConformerEncoder(**kw, layerdrop_prob=0.5).to(device).train()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 250, cfg["d_model"], device=device)
    pos = RelPosEncXL(cfg["d_model"]).to(device)(x)

    def run(enc):
        def step():
            enc(x, pos_embs=pos)[0].sum().backward()
            enc.zero_grad(set_to_none=True)
        return step

    return {"gated encoder (drop 0.5)": run(ours), "SpeechBrain layerdrop_prob 0.5": run(theirs)}


def wavlm_encoder_steps(cfg: dict, device):
    """Gated WavLM at drop 0.5 vs transformers' WavLMModel with ``layerdrop=0.5``, same weights, 4 x 5 s."""
    from transformers import WavLMConfig, WavLMModel

    from dld_brain.lobes import GatedWavLMEncoder

    torch.manual_seed(0)
    ours = GatedWavLMEncoder(config=cfg["wavlm"], config_overrides={"mask_time_prob": 0.0}, drop_prob=0.5,
                             freeze_feature_encoder=cfg["freeze_feature_encoder"]).to(device).train()
    theirs = WavLMModel(WavLMConfig(**{**cfg["wavlm"], "mask_time_prob": 0.0, "layerdrop": 0.5})).to(device).train()
    theirs.load_state_dict(ours.wavlm.state_dict())
    if cfg["freeze_feature_encoder"]:
        theirs.freeze_feature_encoder()
    wavs = torch.randn(4, 5 * 16000, device=device)

    def run(forward, module):
        def step():
            forward().sum().backward()
            module.zero_grad(set_to_none=True)
        return step

    return {"gated encoder (drop 0.5)": run(lambda: ours(wavs), ours),
            "reference layerdrop 0.5": run(lambda: theirs(wavs).last_hidden_state, theirs)}


def child_peak_memory(args, variant: str) -> float:
    """Peak memory (MiB) of 3 steps of ``variant`` in a fresh process: GPU allocator peak, or the CPU
    peak RSS above the resident size once the models are built (Linux /proc)."""
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device, "--batch", str(args.batch),
           "--seconds", str(args.seconds), "--precision", args.precision, "--family", args.family] + (
               ["--small"] if args.small else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def _status_kib(field: str) -> int:
    """A memory figure (KiB) of this process from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def autocast_for(args):
    if args.precision == "fp32":
        return lambda: torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    return lambda: torch.autocast(args.device.split(":")[0], dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small model (FSDD recipe size)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--family", default="conformer", choices=["conformer", "wavlm"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = config(args.small, args.family)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = autocast_for(args)
    batch = make_batch(cfg, args.batch, args.seconds, device)

    if args.child:
        step = make_step(args.child, cfg, device, autocast)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            base = _status_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to now
        for _ in range(3):
            step(*batch)
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                else (_status_kib("VmHWM") - base) / 1024)
        print(json.dumps({"peak_mib": peak}))
        return

    steps = {v: make_step(v, cfg, device, autocast) for v in VARIANTS}
    ms = time_round_robin({v: (lambda s=s: s(*batch)) for v, s in steps.items()}, args.steps, sync)
    enc_ms = time_round_robin(encoder_steps(cfg, device), args.steps, sync)
    reference = "SpeechBrain layerdrop_prob 0.5" if args.family == "conformer" else "reference layerdrop 0.5"
    mem = {v: child_peak_memory(args, v) for v in VARIANTS}
    n_params = sum(p.numel() for p in build_model(cfg, 0.0).parameters()) / 1e6
    shape = (f"{cfg['num_layers']} layers, d_model {cfg['d_model']}" if args.family == "conformer" else
             f"WavLM {cfg['wavlm']['num_hidden_layers']} layers, hidden {cfg['wavlm']['hidden_size']}")
    print(f"machine: {describe_machine(args.device)}; precision {args.precision}")
    print(f"model: {shape}, {n_params:.1f} M parameters; batch "
          f"{args.batch} x {args.seconds:.0f} s; median of {args.steps} steps (gates drawn with the same seed)\n")
    print("| training step | ms | vs static | peak memory MiB | vs static |")
    print("| --- | --- | --- | --- | --- |")
    for v in VARIANTS:
        print(f"| {v} | {ms[v]:.0f} | {ms[v] / ms['static']:.2f} | {mem[v]:.0f} | {mem[v] / mem['static']:.2f} |")
    ours, theirs = enc_ms["gated encoder (drop 0.5)"], enc_ms[reference]
    print(f"\nencoder fwd+bwd at drop rate 0.5: gated lobe {ours:.0f} ms vs {reference.split(' 0.5')[0]} "
          f"{theirs:.0f} ms (ratio {ours / theirs:.2f})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
