"""Depth policies and the per-batch gate sampler."""

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from dld_brain.gates import DepthError, LayerDropSampler, select_layers


@pytest.mark.parametrize("n, expected", [(4, [2, 5, 8, 11]), (6, [1, 3, 5, 7, 9, 11]), (1, [11]),
                                         (12, list(range(12))), (5, [1, 4, 6, 9, 11])])
def test_even_policy_examples(n, expected):
    assert select_layers(12, n) == expected


def test_even_policy_properties():
    for total in range(1, 17):
        for n in range(1, total + 1):
            layers = select_layers(total, n)
            assert len(layers) == n == len(set(layers)) and layers == sorted(layers)
            assert layers[-1] == total - 1 and layers[0] >= 0


def test_first_last_and_explicit():
    assert select_layers(6, 2, policy="first") == [0, 1]
    assert select_layers(6, 2, policy="last") == [4, 5]
    assert select_layers(6, layers=[5, 0, 2]) == [0, 2, 5]
    assert select_layers(6, 2, layers=[3]) == [3]  # an explicit list wins
    assert select_layers(6) == list(range(6))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=0), "depth 0 is out of range.*1..6"), (dict(depth=7), "depth 7 is out of range.*6 layers"),
    (dict(depth=2.5), "depth must be an integer"), (dict(depth=True), "depth must be an integer"),
    (dict(depth=2, policy="random"), "unknown depth policy 'random'"), (dict(layers=[]), "empty"),
    (dict(layers=[0, 6]), r"layers \[6\] out of range.*0..5"), (dict(layers=[1, 1]), "repeats"),
    (dict(layers=["a"]), "must hold integers"),
])
def test_invalid_depths(kwargs, message):
    with pytest.raises(DepthError, match=message):
        select_layers(6, **kwargs)


def test_sampler_statistics_and_seeding():
    sampler = LayerDropSampler(12, drop_prob=0.5, seed=3)
    draws = [sampler.sample() for _ in range(2000)]
    kept = sum(len(d) for d in draws) / (2000 * 12)
    assert abs(kept - 0.5) < 0.02  # 24000 Bernoulli(0.5): sd 0.003
    again = LayerDropSampler(12, drop_prob=0.5, seed=3)
    assert [again.sample() for _ in range(50)] == draws[:50]
    other = LayerDropSampler(12, drop_prob=0.5, seed=4)
    assert [other.sample() for _ in range(50)] != draws[:50]
    rare = LayerDropSampler(8, drop_prob=0.1, seed=0)
    assert abs(sum(len(rare.sample()) for _ in range(1000)) / 8000 - 0.9) < 0.02


def test_sampler_checkpoint_round_trip(tmp_path):
    sampler = LayerDropSampler(6, 0.5, seed=1)
    ckpt = Checkpointer(tmp_path, recoverables={"gates": sampler})
    sampler.sample()
    ckpt.save_checkpoint()
    after_save = [sampler.sample() for _ in range(10)]
    ckpt.recover_if_possible()
    assert [sampler.sample() for _ in range(10)] == after_save
    assert sampler.draws == 11


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_sampler_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="drop_prob"):
        LayerDropSampler(4, p)


def test_sampler_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    LayerDropSampler(12, 0.5, seed=9).sample()
    assert torch.equal(torch.rand(3), expected)
