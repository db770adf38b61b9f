"""The training schedule as the optimiser sees it: warm-up from the first step, a new batch order every
epoch (one process), fine-tuning schedules of their own, a batch defined independently of the GPU count,
and checkpoint averaging that never averages fewer checkpoints than asked."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from synthetic_brain import DYNAMIC, make_brain, record_batches, synthetic_set, tiny_hparams

from dld_brain.recipe import fit


def lrs_at_each_step(brain, run):
    """The learning rate each optimiser.step() call used, while ``run()`` trains ``brain``."""
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_warmup_applies_from_the_first_optimiser_step(tmp_path):
    hparams = tiny_hparams(tmp_path, lr=0.001, warmup_steps=10)
    brain = make_brain(hparams)
    lrs = lrs_at_each_step(brain, lambda: fit(brain, {"train": synthetic_set(8), "valid": None}, hparams))
    assert len(lrs) == 4
    # Noam: lr * step / warmup during warm-up; step 1 is the smallest update, not the peak
    assert lrs == pytest.approx([0.001 * k / 10 for k in range(1, 5)])
