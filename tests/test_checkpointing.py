"""Checkpoint recoverables: random states saved as tensors and plain values, loaded without unpickling
anything else; the skipped-step counter."""

import pickle
import random

import numpy as np
import pytest
import torch

from dld_brain.checkpointing import CheckpointFileError, NonFiniteCounter, RandomState


def draws():
    return [random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.randn(1))]


def test_random_state_round_trip_with_weights_only(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached Gaussian in Python's state, too
    np.random.randn()
    path = tmp_path / "random_state.ckpt"
    RandomState()._save(path)
    expected = draws()
    draws()
    RandomState()._load(path)
    assert draws() == expected
    assert torch.load(path, weights_only=True)["ranks"][0]["torch"].dtype == torch.uint8


def crafted_pickle(target) -> bytes:
    """A protocol-0 pickle that calls ``exec(<code writing target>)`` when it is unpickled."""
    code = f"open({str(target)!r}, 'w').write('owned')"
    return b"cbuiltins\nexec\n(V" + code.encode() + b"\ntR."


def test_untrusted_rng_checkpoint_pickle_refused(tmp_path):
    """A crafted random_state file whose unpickling would write a file is refused; the file is not written."""
    probe = tmp_path / "probe.txt"
    pickle.loads(crafted_pickle(probe))  # the payload is real: a trusting unpickle runs it
    assert probe.read_text() == "owned"
    target = tmp_path / "pwned.txt"
    path = tmp_path / "random_state.ckpt"
    path.write_bytes(crafted_pickle(target))
    with pytest.raises(CheckpointFileError, match="random_state.ckpt is not a plain tensor file"):
        RandomState()._load(path)
    assert not target.exists()


def test_nonfinite_counter_survives_a_mid_epoch_checkpoint(tmp_path):
    counter = NonFiniteCounter()
    counter.epoch, counter.total = 2, 5
    counter._save(tmp_path / "nonfinite.ckpt")
    mid, end = NonFiniteCounter(), NonFiniteCounter()
    mid._load(tmp_path / "nonfinite.ckpt", end_of_epoch=False)
    end._load(tmp_path / "nonfinite.ckpt", end_of_epoch=True)
    assert (mid.epoch, mid.total) == (2, 5)
    assert (end.epoch, end.total) == (0, 5)  # a new epoch starts with a fresh patience
