"""Two-process DDP training (gloo, CPU, tiny synthetic brain): a non-finite loss on ONE rank is skipped by
every rank, and each rank's random state goes through a checkpoint and comes back to that rank."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from synthetic_brain import DYNAMIC, ddp_worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """2 ranks, 2 epochs of duration-bucketed batches (4 s of audio per optimiser step: 2 x 2 s), the loss
    of step 3 made NaN on rank 1 only."""
    out = tmp_path_factory.mktemp("ddp")
    changes = dict(number_of_epochs=2, batch_seconds=4, **DYNAMIC)
    mp.spawn(ddp_worker, args=(2, free_port(), str(out), "nan_loss:3@1", changes), nprocs=2, join=True)
    return [(torch.load(out / f"rank{r}.pt"), json.loads((out / f"rank{r}.json").read_text())) for r in (0, 1)]


def test_nonfinite_ddp_every_rank_skips_the_step_and_weights_stay_identical(ddp_run):
    (weights0, info0), (weights1, info1) = ddp_run
    assert info0["skipped"] == info1["skipped"] == 2  # step 3 of both epochs; rank 0's loss was finite
    for key in weights0:
        assert torch.isfinite(weights0[key]).all() and torch.isfinite(weights1[key]).all(), key
        assert torch.equal(weights0[key], weights1[key]), f"{key} differs between the ranks"


def test_rng_state_of_every_rank_survives_a_ddp_checkpoint(ddp_run):
    (_, info0), (_, info1) = ddp_run
    assert info0["draws_saved"] != info1["draws_saved"]  # the ranks had different states
    assert info0["draws_loaded"] == info0["draws_saved"]
    assert info1["draws_loaded"] == info1["draws_saved"]  # rank 1 got its own state back, not rank 0's


def test_reshuffle_under_ddp(ddp_run):
    for _, info in ddp_run:
        epochs = {}
        for epoch, ids in info["batches"]:
            epochs.setdefault(epoch, set()).add(frozenset(ids))
        assert sorted(epochs) == [1, 2] and epochs[1] != epochs[2]
