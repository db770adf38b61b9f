"""Distillation losses on synthetic posteriors."""

import pytest
import torch

from dld_brain.losses import ctc_posterior_kl, posterior_kl


def logp(*shape, seed=0):
    return torch.log_softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_zero_when_equal_positive_otherwise():
    t = logp(2, 7, 5)
    lens = torch.tensor([1.0, 0.6])
    assert ctc_posterior_kl(t.clone(), t, lens).abs() < 1e-7
    assert ctc_posterior_kl(logp(2, 7, 5, seed=1), t, lens) > 0


def test_matches_hand_computation():
    s, t = logp(1, 3, 4, seed=2), logp(1, 3, 4, seed=3)
    expected = sum((t[0, i].exp() * (t[0, i] - s[0, i])).sum() for i in range(3)) / 3
    assert torch.allclose(ctc_posterior_kl(s, t, torch.ones(1)), expected, atol=1e-6)


def test_gradient_reaches_only_the_student():
    s = logp(2, 5, 4, seed=4).requires_grad_(True)
    t = logp(2, 5, 4, seed=5).requires_grad_(True)
    ctc_posterior_kl(s, t, torch.ones(2)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_padding_frames_change_nothing():
    s, t = logp(2, 10, 6, seed=6), logp(2, 10, 6, seed=7)
    lens = torch.tensor([1.0, 0.5])  # second utterance: 5 valid frames
    base = ctc_posterior_kl(s, t, lens)
    s2, t2 = s.clone(), t.clone()
    s2[1, 5:], t2[1, 5:] = logp(5, 6, seed=8), logp(5, 6, seed=9)
    assert torch.allclose(ctc_posterior_kl(s2, t2, lens), base)


def test_normalisations():
    s, t = logp(2, 4, 3, seed=10), logp(2, 4, 3, seed=11)
    lens = torch.tensor([1.0, 0.5])
    per_frame = (t.exp() * (t - s)).sum(-1)
    frames = (per_frame[0].sum() + per_frame[1, :2].sum()) / 6
    utts = (per_frame[0].mean() + per_frame[1, :2].mean()) / 2
    assert torch.allclose(ctc_posterior_kl(s, t, lens, normalisation="frames"), frames, atol=1e-6)
    assert torch.allclose(ctc_posterior_kl(s, t, lens, normalisation="utterances"), utts, atol=1e-6)


def test_temperature_scaling():
    s, t = logp(1, 3, 4, seed=12), logp(1, 3, 4, seed=13)
    temp = 2.0
    ss, tt = torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)
    expected = (tt.exp() * (tt - ss)).sum(-1).mean() * temp**2
    assert torch.allclose(ctc_posterior_kl(s, t, torch.ones(1), temperature=temp), expected, atol=1e-6)


def test_errors_and_low_precision():
    with pytest.raises(ValueError, match="differ in shape"):
        ctc_posterior_kl(logp(1, 3, 4), logp(1, 3, 5), torch.ones(1))
    with pytest.raises(ValueError, match="normalisation"):
        ctc_posterior_kl(logp(1, 3, 4), logp(1, 3, 4), torch.ones(1), normalisation="tokens")
    with pytest.raises(ValueError, match="temperature"):
        ctc_posterior_kl(logp(1, 3, 4), logp(1, 3, 4), torch.ones(1), temperature=0)
    out = ctc_posterior_kl(logp(2, 6, 30, seed=1).bfloat16(), logp(2, 6, 30).bfloat16(), torch.ones(2))
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_utterance_level_kl():
    s, t = logp(3, 5, seed=14), logp(3, 5, seed=15)
    assert posterior_kl(t.clone(), t).abs() < 1e-7
    assert torch.allclose(posterior_kl(s, t), (t.exp() * (t - s)).sum(-1).mean(), atol=1e-6)
