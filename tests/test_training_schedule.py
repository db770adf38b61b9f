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


def epoch_batches(tmp_path, epochs=3, **changes):
    """{epoch: [batch ids in order]} of a tiny run with duration-bucketed batches (training skipped)."""
    hparams = tiny_hparams(tmp_path, number_of_epochs=epochs, **{**DYNAMIC, **changes})
    brain = make_brain(hparams)
    seen = record_batches(brain)
    brain.fit_batch = lambda batch, record=brain.fit_batch: (record(batch), torch.tensor(0.0))[1]
    fit(brain, {"train": synthetic_set(24), "valid": None}, hparams)
    by_epoch = {}
    for epoch, ids in seen:
        by_epoch.setdefault(epoch, []).append(ids)
    return by_epoch


def test_reshuffle_dynamic_batches_every_epoch_on_one_process(tmp_path):
    """SpeechBrain calls set_epoch only on brain.train_sampler (None outside DDP): every epoch used to see
    the same duration buckets, and from epoch 2 on in the same order."""
    by_epoch = epoch_batches(tmp_path, epochs=3)
    assert sorted(by_epoch) == [1, 2, 3]
    all_ids = sorted(i for ids in by_epoch[1] for i in ids)
    for epoch in (2, 3):
        assert sorted(i for ids in by_epoch[epoch] for i in ids) == all_ids  # every utterance once an epoch
    sets = {e: {frozenset(ids) for ids in batches} for e, batches in by_epoch.items()}
    assert sets[1] != sets[2] and sets[2] != sets[3] and sets[1] != sets[3]
    assert by_epoch[2] != by_epoch[3]


def test_reshuffle_depends_only_on_seed_and_epoch(tmp_path):
    """The batch order of an epoch is a function of (seed, epoch): the same in a second run, so a run resumed
    mid-epoch continues in the batches of the uninterrupted one; another seed gives other batches."""
    first = epoch_batches(tmp_path / "a", epochs=2)
    assert epoch_batches(tmp_path / "b", epochs=2) == first
    assert epoch_batches(tmp_path / "c", epochs=2, seed=7)[2] != first[2]
