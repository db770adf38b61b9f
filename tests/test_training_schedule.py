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


# ---- fine-tuning schedules (RDLD / DLD start from the teacher) --------------------------------------------

@pytest.mark.parametrize("corpus", ["", "tedlium3/"])
def test_finetuning_yamls_resolve_to_their_own_schedule(corpus):
    from conftest import REPO

    from dld_brain.hparams import merged_tree

    def schedule(method):
        tree = merged_tree(REPO / "hparams" / f"{corpus}{method}_conformer.yaml")
        return int(tree["number_of_epochs"]), float(tree["lr"]), int(tree["warmup_steps"])

    scratch = schedule("rdsc")
    assert schedule("teacher") == scratch
    for method in ("rdld", "dld"):
        epochs, lr, warmup = schedule(method)
        assert epochs < scratch[0] and lr < scratch[1] and warmup < scratch[2], (method, schedule(method), scratch)


# ---- the batch of one optimiser step, whatever the GPU count ---------------------------------------------

def test_effective_batch_is_the_same_on_1_4_8_gpus():
    from dld_brain.recipe import effective_batch

    hparams = {"dynamic_batching": True, "batch_seconds": 2400, "dynamic_batch_sampler_train": {"max_batch_length": 600}}
    got = {w: effective_batch(hparams, w) for w in (1, 4, 8)}
    assert {w: b["per_step"] for w, b in got.items()} == {1: 2400, 4: 2400, 8: 2400}
    assert [(got[w]["per_gpu"], got[w]["grad_accumulation"]) for w in (1, 4, 8)] == [(600, 4), (600, 1), (300, 1)]
    assert effective_batch(hparams, 3)["per_step"] == pytest.approx(2400)  # 3 x 400 s x 2: never above the cap
    per_gpu = {**hparams, "batch_seconds": None}  # SpeechBrain's behaviour: the step grows with the GPU count
    assert [effective_batch(per_gpu, w)["per_step"] for w in (1, 4)] == [600, 2400]


@pytest.mark.parametrize("world, accumulation", [(1, 4), (4, 1)])
def test_fit_uses_the_batch_of_the_world_size(tmp_path, monkeypatch, caplog, world, accumulation):
    """A fake world size: the per-GPU batch length and gradient accumulation the run trains with come from
    it, and the effective batch is logged at start."""
    import logging

    import dld_brain.recipe as recipe

    monkeypatch.setattr(recipe, "world_size", lambda: world)
    hparams = tiny_hparams(tmp_path, batch_seconds=8, **DYNAMIC)
    brain = make_brain(hparams)
    with caplog.at_level(logging.INFO, logger="dld_brain.recipe"):
        steps = lrs_at_each_step(brain, lambda: fit(brain, {"train": synthetic_set(24), "valid": None}, hparams))
    assert brain.grad_accumulation_factor == accumulation
    per_gpu = 8 / world / accumulation
    assert brain.train_sampler._max_batch_length == per_gpu
    batches = len(brain.train_sampler)
    assert len(steps) == batches // accumulation
    assert (f"Effective batch: 8 s of audio per optimiser step = {world} process(es) x {per_gpu:g} s x "
            f"{accumulation} gradient-accumulation step(s)") in caplog.text


# ---- checkpoint averaging ------------------------------------------------------------------------------

def test_avg_checkpoints_with_fewer_kept_is_an_error(tmp_path):
    from dld_brain.brain import EvaluationError
    from dld_brain.hparams import HparamsError
    from dld_brain.recipe import check_averaging

    hparams = tiny_hparams(tmp_path, avg_checkpoints=5, ckpts_to_keep=2)
    brain = make_brain(hparams)
    for epoch, wer in ((1, 50.0), (2, 40.0)):
        brain.checkpointer.save_checkpoint(meta={"WER": wer, "epoch": epoch})
    with pytest.raises(EvaluationError, match=r"avg_checkpoints: 5 but only 2 checkpoint\(s\) kept .*"
                                              r"--ckpts_to_keep=5"):
        brain.on_evaluate_start(min_key="WER")
    with pytest.raises(HparamsError, match="ckpts_to_keep is 2: set --ckpts_to_keep=5"):
        check_averaging(hparams)  # training that could never keep 5 stops before it starts
    brain.hparams.avg_checkpoints = 2
    brain.on_evaluate_start(min_key="WER")  # 2 kept, 2 asked: averaged


def test_default_keeps_enough_checkpoints_for_the_suggested_averaging():
    import re

    from conftest import REPO

    from dld_brain.hparams import merged_tree

    suggested = {int(k) for k in re.findall(r"--avg_checkpoints=(\d+)", (REPO / "README.md").read_text())}
    assert suggested
    for name in ("dld_conformer.yaml", "tedlium3/dld_conformer.yaml", "fsdd/dld.yaml", "slu/dld.yaml"):
        assert int(merged_tree(REPO / "hparams" / name)["ckpts_to_keep"]) >= max(suggested), name
