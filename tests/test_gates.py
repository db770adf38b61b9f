"""Depth policies (select_layers / validate_layers) and the per-batch gate sampler."""

import math
import re

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer

from dld_brain.gates import DEPTH_POLICIES, DepthError, LayerDropSampler, select_layers

# ---- select_layers: the even policy ------------------------------------------------------------


@pytest.mark.parametrize("total, n, expected", [
    (12, 4, [2, 5, 8, 11]),
    (12, 6, [1, 3, 5, 7, 9, 11]),
    (12, 3, [3, 7, 11]),
    (12, 2, [5, 11]),
    (12, 1, [11]),
    (12, 12, list(range(12))),
    (6, 3, [1, 3, 5]),
    (4, 2, [1, 3]),
])
def test_even_policy_examples(total, n, expected):
    assert select_layers(total, n) == expected
    assert select_layers(total, n, policy="even") == expected  # "even" is the default


def test_even_policy_properties_for_every_size():
    for total in range(1, 17):
        assert select_layers(total, total) == list(range(total)), total  # n = N: every layer
        assert select_layers(total, 1) == [total - 1], total  # n = 1: the last layer only
        for n in range(1, total + 1):
            layers = select_layers(total, n)
            assert len(layers) == n, (total, n, layers)
            assert len(set(layers)) == n, (total, n, layers)
            assert layers == sorted(layers), (total, n, layers)
            assert layers[-1] == total - 1, (total, n, layers)  # always ends at the last layer
            assert all(0 <= i < total for i in layers), (total, n, layers)
            gaps = [b - a for a, b in zip([-1] + layers, layers)]
            assert max(gaps) - min(gaps) <= 1, (total, n, layers)  # spread evenly


def test_no_depth_means_all_layers():
    assert select_layers(5) == [0, 1, 2, 3, 4]
    assert select_layers(5, None, None, "first") == [0, 1, 2, 3, 4]


# ---- first / last policies and explicit lists ---------------------------------------------------


@pytest.mark.parametrize("total, n", [(1, 1), (6, 1), (6, 2), (6, 6), (12, 5)])
def test_first_and_last_policies(total, n):
    assert select_layers(total, n, policy="first") == list(range(n))
    assert select_layers(total, n, policy="last") == list(range(total - n, total))


def test_explicit_layer_lists_are_sorted_and_win_over_depth():
    assert select_layers(6, layers=[5, 0, 2]) == [0, 2, 5]
    assert select_layers(6, layers=(3,)) == [3]
    assert select_layers(6, layers=range(6)) == list(range(6))
    assert select_layers(6, layers=[torch.tensor(4), 1]) == [1, 4]  # integer tensors are fine
    assert select_layers(6, 2, layers=[3]) == [3]  # an explicit list wins over a depth
    assert select_layers(6, 2, layers=[4, 1], policy="first") == [1, 4]


def test_policies_constant():
    assert set(DEPTH_POLICIES) == {"even", "first", "last"}


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, bad, valid", [
    (dict(depth=0), "0", "1..6"),
    (dict(depth=7), "7", "1..6"),
    (dict(depth=-2), "-2", "1..6"),
    (dict(depth=2.5), "2.5", "1..6"),
    (dict(depth=2.0), "2.0", "1..6"),
    (dict(depth="3"), "'3'", "1..6"),
    (dict(depth=True), "True", "1..6"),
    (dict(layers=[0, 6]), "[6]", "0..5"),
    (dict(layers=[-1, 2]), "[-1]", "0..5"),
    (dict(layers=["a"]), "['a']", "0..5"),
])
def test_invalid_depth_or_layers_name_value_and_range(kwargs, bad, valid):
    with pytest.raises(DepthError) as info:
        select_layers(6, **kwargs)
    message = str(info.value)
    assert bad in message, message
    assert valid in message, message


def test_depth_error_is_a_value_error():
    with pytest.raises(ValueError):
        select_layers(3, 4)


def test_unknown_policy_is_named_with_the_choices():
    with pytest.raises(DepthError) as info:
        select_layers(6, 2, policy="random")
    message = str(info.value)
    assert "'random'" in message
    assert all(p in message for p in DEPTH_POLICIES)


def test_empty_and_repeated_layer_lists():
    with pytest.raises(DepthError, match="empty"):
        select_layers(6, layers=[])
    with pytest.raises(DepthError, match=re.escape("[1, 3, 1]") + ".*repeats"):
        select_layers(6, layers=[1, 3, 1])


@pytest.mark.parametrize("layers", [[0, 2.5], [True, 2], "12", 3])
def test_non_integer_layer_entries_are_rejected(layers):
    with pytest.raises(DepthError, match="integers.*valid indices are 0..5"):
        select_layers(6, layers=layers)


def test_numpy_integers_are_accepted():
    np = pytest.importorskip("numpy")
    assert select_layers(6, np.int64(3)) == [1, 3, 5]
    assert select_layers(6, layers=np.array([4, 0])) == [0, 4]


# ---- LayerDropSampler --------------------------------------------------------------------------------


def test_sampler_frequency_matches_drop_prob():
    layers, draws = 12, 2000
    sampler = LayerDropSampler(layers, drop_prob=0.5, seed=3)
    kept = [sampler.sample() for _ in range(draws)]
    assert sampler.draws == draws
    assert all(k == sorted(set(k)) and all(0 <= i < layers for i in k) for k in kept)
    n = layers * draws
    rate = sum(len(k) for k in kept) / n
    assert abs(rate - 0.5) < 5 * math.sqrt(0.25 / n)  # 5 sigma of a Binomial(24000, 0.5) proportion
    per_layer = [sum(i in k for k in kept) / draws for i in range(layers)]
    assert all(abs(f - 0.5) < 5 * math.sqrt(0.25 / draws) for f in per_layer), per_layer
    assert any(0 < len(k) < layers for k in kept)


def test_sampler_other_probabilities():
    rare = LayerDropSampler(8, drop_prob=0.1, seed=0)
    n = 8 * 1000
    assert abs(sum(len(rare.sample()) for _ in range(1000)) / n - 0.9) < 5 * math.sqrt(0.09 / n)
    static = LayerDropSampler(5, drop_prob=0.0, seed=0)
    assert all(static.sample() == [0, 1, 2, 3, 4] for _ in range(100))


def test_same_seed_same_sequence_different_seed_differs():
    first = LayerDropSampler(12, 0.5, seed=3)
    again = LayerDropSampler(12, 0.5, seed=3)
    other = LayerDropSampler(12, 0.5, seed=4)
    seq = [first.sample() for _ in range(50)]
    assert [again.sample() for _ in range(50)] == seq
    assert [other.sample() for _ in range(50)] != seq


def test_sampler_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    sampler = LayerDropSampler(12, 0.5, seed=9)
    for _ in range(10):
        sampler.sample()
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)  # and the global seed does not change the gates
    a = LayerDropSampler(12, 0.5, seed=9)
    seq_a = [a.sample() for _ in range(20)]
    torch.manual_seed(456)
    b = LayerDropSampler(12, 0.5, seed=9)
    assert [b.sample() for _ in range(20)] == seq_a


def test_sampler_checkpoint_round_trip(tmp_path):
    sampler = LayerDropSampler(6, 0.5, seed=1)
    ckpt = Checkpointer(tmp_path, recoverables={"gates": sampler})
    for _ in range(3):
        sampler.sample()
    ckpt.save_checkpoint()
    after_save = [sampler.sample() for _ in range(10)]
    assert sampler.draws == 13
    assert ckpt.recover_if_possible() is not None
    assert sampler.draws == 3
    assert [sampler.sample() for _ in range(10)] == after_save
    assert sampler.draws == 13


def test_sampler_resumes_in_a_fresh_process(tmp_path):
    sampler = LayerDropSampler(6, 0.5, seed=1)
    for _ in range(7):
        sampler.sample()
    Checkpointer(tmp_path, recoverables={"gates": sampler}).save_checkpoint()
    after_save = [sampler.sample() for _ in range(10)]
    resumed = LayerDropSampler(6, 0.5, seed=1)  # a new run: same seed, generator at step 0
    Checkpointer(tmp_path, recoverables={"gates": resumed}).recover_if_possible()
    assert resumed.draws == 7
    assert [resumed.sample() for _ in range(10)] == after_save


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_sampler_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="drop_prob"):
        LayerDropSampler(4, p)
