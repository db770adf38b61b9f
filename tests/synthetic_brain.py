"""A tiny DynamicDepthCTCBrain on synthetic audio, for training-loop tests that need seconds, not a recipe run.

The hparams are the FSDD recipe's (``hparams/fsdd/<method>.yaml``) shrunk to a 2-layer, 16-dim model; the
dataset is random noise with random token targets (``duration`` column included, so duration-bucketed
batches work). :func:`ddp_worker` runs the same brain as one rank of a 2-process gloo group (CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import speechbrain as sb
import torch

REPO = Path(__file__).resolve().parents[1]

TINY = dict(num_layers=2, d_model=16, nhead=2, d_ffn=32, kernel_size=3, number_of_epochs=1, batch_size=2,
            wav_augment=None, spec_augment=[], warmup_steps=10)

DYNAMIC = dict(dynamic_batching=True, dynamic_batch_sampler_train=dict(
    max_batch_length=2.0, num_buckets=3, shuffle=True, batch_ordering="random", max_batch_ex=4))


def tiny_hparams(root, method: str = "rdsc", **changes) -> dict:
    """``hparams/fsdd/<method>.yaml`` with :data:`TINY` and ``changes`` applied, outputs under ``root``."""
    from dld_brain.hparams import load_hparams

    overrides = {"experiment_root": str(root), "data_folder": str(root), **TINY, **changes}
    hparams = load_hparams(REPO / "hparams" / "fsdd" / f"{method}.yaml", overrides)
    Path(hparams["output_folder"]).mkdir(parents=True, exist_ok=True)
    return hparams


def synthetic_set(n: int = 16, seed: int = 0, min_s: float = 0.3, max_s: float = 1.0):
    """``n`` utterances of noise (durations uniform in [min_s, max_s]) with 3 random tokens each."""
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for i in range(n):
        duration = round(min_s + (max_s - min_s) * float(torch.rand(1, generator=gen)), 2)
        data[f"u{i:03d}"] = {"duration": duration, "item": i}

    @sb.utils.data_pipeline.takes("duration", "item")
    @sb.utils.data_pipeline.provides("sig", "tokens", "wrd")
    def pipeline(duration, item):
        g = torch.Generator().manual_seed(1000 + int(item))
        yield 0.1 * torch.randn(int(float(duration) * 16000), generator=g)
        yield torch.randint(1, 17, (3,), generator=g)
        yield "one two three"

    return sb.dataio.dataset.DynamicItemDataset(
        data, dynamic_items=[pipeline], output_keys=["id", "sig", "tokens", "wrd", "duration"])


def make_brain(hparams: dict, run_opts=None):
    """The recipe's Brain for these hparams (CPU unless ``run_opts`` says otherwise)."""
    from dld_brain.brain import DynamicDepthCTCBrain

    return DynamicDepthCTCBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                                run_opts={"device": "cpu", **(run_opts or {})},
                                checkpointer=hparams["checkpointer"])


def record_batches(brain) -> list:
    """Make ``brain`` remember the utterance ids of every training batch: ``[(epoch, ids), ...]``."""
    seen = []
    fit_batch = brain.fit_batch

    def recording(batch):
        seen.append((brain.hparams.epoch_counter.current, tuple(batch.id)))
        return fit_batch(batch)

    brain.fit_batch = recording
    return seen


def ddp_worker(rank: int, world: int, port: int, out: str, fault: str, changes: dict) -> None:
    """One rank of a 2-process gloo run: train the tiny brain, write its final weights, its batches and
    its skipped-step count to ``out/rank<r>.*``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DLD_FAULT=fault)
    torch.set_num_threads(1)
    run_opts = {"device": "cpu", "distributed_backend": "gloo"}
    sb.utils.distributed.ddp_init_group(run_opts)
    from dld_brain.recipe import fit

    hparams = tiny_hparams(Path(out) / "exp", **changes)
    brain = make_brain(hparams, run_opts)
    seen = record_batches(brain)
    data = synthetic_set(16)
    fit(brain, {"train": data, "valid": None}, hparams)
    torch.save({k: v.detach().clone() for k, v in brain.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(
        {"batches": seen, "skipped": brain.nonfinite.total}))
    torch.distributed.destroy_process_group()
