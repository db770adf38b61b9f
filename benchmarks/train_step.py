#!/usr/bin/env python3
"""One training step (forward + backward + AdamW) of static, RDsc, RDLD and DLD training, measured side by
side in one run, with the peak memory of each; plus our gated encoder against SpeechBrain's
ConformerEncoder with its built-in ``layerdrop_prob`` at the same drop rate.

RDsc and RDLD have the same step (they differ only in initialisation); DLD adds the frozen teacher's
forward pass and the KL term. With drop_prob 0.5, a random step runs about half the layers, so the
timings are medians over many steps (the gates are drawn from the same seed for every variant).
Usage: python benchmarks/train_step.py [--small] [--steps 12] [--device cpu|cuda] [--precision fp32 bf16]
       [--family conformer|wavlm]   (wavlm: WavLM Base+-shaped, or --small the FSDD one, randomly
       initialised; the reference encoder is transformers' WavLMModel with its own layerdrop 0.5)

Paper batch size: ``--batch_seconds 600 --seconds 35`` measures a batch of 600 s of audio per GPU (the YAMLs'
``max_batch_length: 600``) made of 35 s utterances, i.e. 17 x 35 s: the duration-bucketed sampler's longest
bucket (LibriSpeech's longest training utterances), which holds the most activation memory for a given number
of seconds (attention grows with the square of the length). Peak memory is reported for the sampled gates
(about half the layers run) and for the worst case, a step where every gate keeps its layer (with p = 0.5 and
12 layers one step in 4096: it happens in a long run, so a batch must fit it). ``--fit_gib 40 80`` adds, per
variant and precision, the largest batch (seconds of audio of that utterance length) whose worst-case peak fits
a card of that size: a linear fit of the peak over two measured batch sizes (the batch and half of it),
minus ``--margin_gib`` for the CUDA context and fragmentation. Peaks are the allocator's on a GPU (reserved
memory for the fit) and the peak resident memory above the built models on the CPU (ratios only there).
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
    """A closure running one optimisation step of ``variant`` on a batch; ``step.student`` is the trained model."""
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

    step.student = student
    return step


def batch_size_for(args) -> int:
    """Utterances per batch: ``--batch``, or as many ``--seconds``-long ones as fit in ``--batch_seconds``."""
    if args.batch_seconds is None:
        return args.batch
    return max(1, int(args.batch_seconds // args.seconds))


def largest_fitting_batch(n1: int, peak1: float, n2: int, peak2: float, capacity: float) -> int:
    """Largest batch size n with ``peak(n) <= capacity`` for the line through (n1, peak1) and (n2, peak2)
    (activation memory grows linearly with the number of equal-length utterances); 0 if none fits."""
    if n1 == n2:
        return n1 if peak1 <= capacity else 0
    slope = (peak1 - peak2) / (n1 - n2)
    if slope <= 0:  # no growth measured (noise at tiny sizes): nothing to extrapolate from
        return n1 if peak1 <= capacity else 0
    fixed = peak1 - slope * n1
    return max(0, int((capacity - fixed) // slope))


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


def child_peak_memory(args, variant: str, precision: str, batch: int, worst: bool = False) -> dict:
    """Peak memory (MiB) of 3 steps of ``variant`` in a fresh process: GPU allocator peak (``peak_mib``; and
    ``reserved_mib``), or the CPU peak RSS above the resident size once the models are built (Linux /proc).
    ``worst``: every layer runs (all gates keep). ``{"oom": True}`` when the batch does not fit the GPU."""
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device, "--batch", str(batch),
           "--seconds", str(args.seconds), "--precision", precision, "--family", args.family] + (
               ["--small"] if args.small else []) + (["--child_worst"] if worst else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_child(args, variant: str, device, cfg: dict) -> None:
    """The ``--child`` process: 3 steps, then one JSON line with the peak memory (see child_peak_memory)."""
    batch = make_batch(cfg, args.batch, args.seconds, device)
    step = make_step(variant, cfg, device, autocast_for(args.device, args.precision[0]))
    if args.child_worst:
        step.student.encoder.gate_sampler.drop_prob = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to now
    try:
        for _ in range(3):
            step(*batch)
    except torch.cuda.OutOfMemoryError:
        print(json.dumps({"oom": True}))
        return
    if device.type == "cuda":
        print(json.dumps({"peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                          "reserved_mib": torch.cuda.max_memory_reserved() / 2**20}))
    else:
        print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def _status_kib(field: str) -> int:
    """A memory figure (KiB) of this process from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def autocast_for(device: str, precision: str):
    if precision == "fp32":
        return lambda: torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.split(":")[0], dtype=dtype)


def _mib(mem: dict, key: str = "peak_mib") -> str:
    return "OOM" if mem.get("oom") else f"{mem[key]:.0f}"


def _ratio(mem: dict, ref: dict, key: str = "peak_mib") -> str:
    return "-" if mem.get("oom") or ref.get("oom") else f"{mem[key] / ref[key]:.2f}"


def measure_precision(args, cfg: dict, device, precision: str, batch: int) -> dict:
    """Memory (fresh child processes, sampled gates and all layers) and step time (round-robin here) of every
    variant in one precision; variants that do not fit the GPU are not timed."""
    mem = {v: child_peak_memory(args, v, precision, batch) for v in VARIANTS}
    worst = {v: child_peak_memory(args, v, precision, batch, worst=True) if v != "static" else mem[v]
             for v in VARIANTS}
    runnable = [v for v in VARIANTS if not worst[v].get("oom") and not mem[v].get("oom")]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = make_batch(cfg, batch, args.seconds, device)
    steps = {v: make_step(v, cfg, device, autocast_for(args.device, precision)) for v in runnable}
    ms = time_round_robin({v: (lambda s=s: s(*data)) for v, s in steps.items()}, args.steps, sync) if steps else {}
    del steps, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"mem": mem, "worst": worst, "ms": ms}


def fit_rows(args, precision: str, batch: int, worst: dict, capacities: list) -> list:
    """Per variant, the largest batch (utterances, seconds) whose worst-case peak fits each capacity (GiB)."""
    key = "reserved_mib" if args.device.startswith("cuda") else "peak_mib"
    half = max(1, batch // 2)
    rows = []
    for v in VARIANTS:
        if worst[v].get("oom"):
            rows.append((precision, v, ["(batch does not fit this device)"] * len(capacities)))
            continue
        small = child_peak_memory(args, v, precision, half, worst=True)
        cells = []
        for gib in capacities:
            cap = (gib - args.margin_gib) * 1024
            n = largest_fitting_batch(batch, worst[v][key], half, small[key], cap)
            cells.append(f"{n} x {args.seconds:g} s = {n * args.seconds:.0f} s")
        rows.append((precision, v, cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small model (FSDD recipe size)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch (without --batch_seconds)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of every utterance")
    parser.add_argument("--batch_seconds", type=float, default=None,
                        help="seconds of audio per batch (per GPU), e.g. 600 = the YAMLs' max_batch_length")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--family", default="conformer", choices=["conformer", "wavlm"])
    parser.add_argument("--fit_gib", nargs="*", type=float, default=[],
                        help="card sizes (GiB): the largest batch fitting each, e.g. 40 80")
    parser.add_argument("--margin_gib", type=float, default=1.5,
                        help="memory left on the card for the CUDA context and fragmentation (for --fit_gib)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child_worst", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = config(args.small, args.family)
    if args.child:
        run_child(args, args.child, device, cfg)
        return

    batch = batch_size_for(args)
    results = {p: measure_precision(args, cfg, device, p, batch) for p in args.precision}
    n_params = sum(p.numel() for p in build_model(cfg, 0.0).parameters()) / 1e6
    shape = (f"{cfg['num_layers']} layers, d_model {cfg['d_model']}" if args.family == "conformer" else
             f"WavLM {cfg['wavlm']['num_hidden_layers']} layers, hidden {cfg['wavlm']['hidden_size']}")
    unit = "GPU allocator peak" if device.type == "cuda" else "CPU peak RSS above the built models (ratios only)"
    print(f"machine: {describe_machine(args.device)}; precision {' '.join(args.precision)}")
    print(f"model: {shape}, {n_params:.1f} M parameters; batch {batch} x {args.seconds:g} s = "
          f"{batch * args.seconds:g} s of audio" + (f" (--batch_seconds {args.batch_seconds:g})"
                                                    if args.batch_seconds else "")
          + f"; median of {args.steps} steps (gates drawn with the same seed); memory: {unit}\n")
    print("| precision | training step | ms | vs static | peak memory MiB | vs static "
          "| all layers kept: peak MiB | vs static |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for precision, res in results.items():
        ms, mem, worst = res["ms"], res["mem"], res["worst"]
        for v in VARIANTS:
            time_ms = f"{ms[v]:.0f}" if v in ms else "-"
            time_ratio = f"{ms[v] / ms['static']:.2f}" if v in ms and "static" in ms else "-"
            print(f"| {precision} | {v} | {time_ms} | {time_ratio} | {_mib(mem[v])} | {_ratio(mem[v], mem['static'])} "
                  f"| {_mib(worst[v])} | {_ratio(worst[v], worst['static'])} |")
    if device.type == "cuda":
        print("\nreserved (what the card must hold), all layers kept, MiB: " + "; ".join(
            f"{p} {v} {_mib(r['worst'][v], 'reserved_mib')}" for p, r in results.items() for v in VARIANTS))
    if args.fit_gib:
        print(f"\nlargest batch of {args.seconds:g} s utterances whose all-layers peak fits the card ("
              f"{'reserved' if device.type == 'cuda' else 'CPU RSS: code path check only'}; linear in the batch "
              f"size from {batch} and {max(1, batch // 2)} utterances; {args.margin_gib:g} GiB kept free):\n")
        print("| precision | training step | " + " | ".join(f"{g:g} GiB" for g in args.fit_gib) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in args.fit_gib) + " |")
        for precision, res in results.items():
            for p, v, cells in fit_rows(args, precision, batch, res["worst"], args.fit_gib):
                print(f"| {p} | {v} | " + " | ".join(cells) + " |")
    if args.batch_seconds is None:
        enc_ms = time_round_robin(encoder_steps(cfg, device), args.steps,
                                  torch.cuda.synchronize if device.type == "cuda" else (lambda: None))
        reference = "SpeechBrain layerdrop_prob 0.5" if args.family == "conformer" else "reference layerdrop 0.5"
        ours, theirs = enc_ms["gated encoder (drop 0.5)"], enc_ms[reference]
        print(f"\nencoder fwd+bwd at drop rate 0.5: gated lobe {ours:.0f} ms vs {reference.split(' 0.5')[0]} "
              f"{theirs:.0f} ms (ratio {ours / theirs:.2f})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
