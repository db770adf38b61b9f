"""Distillation losses on synthetic posteriors: KL(teacher || student), masking, normalisation, temperature."""

import math

import pytest
import torch

from dld_brain.losses import ctc_posterior_kl, posterior_kl, valid_frame_mask


def logp(*shape, seed=0):
    return torch.log_softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def kl_rows(t, s):
    """Per-row KL(t || s) for log-probs, by the definition."""
    return (t.exp() * (t - s)).sum(-1)


def test_zero_when_equal_positive_otherwise():
    t = logp(2, 7, 5)
    lens = torch.tensor([1.0, 0.6])
    for norm in ("frames", "utterances"):
        assert ctc_posterior_kl(t.clone(), t, lens, normalisation=norm).abs() < 1e-6
        assert ctc_posterior_kl(t.clone(), t, lens, temperature=3.0, normalisation=norm).abs() < 1e-5
        assert ctc_posterior_kl(logp(2, 7, 5, seed=1), t, lens, normalisation=norm) > 0.01


def test_matches_hand_computed_numbers():
    # one utterance, two frames, two classes; teacher p, student q (probabilities)
    p = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])
    q = torch.tensor([[[0.25, 0.75], [0.6, 0.4]]])
    frame1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    frame2 = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    loss = ctc_posterior_kl(q.log(), p.log(), torch.ones(1))
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx((frame1 + frame2) / 2, abs=1e-6)
    # direction: KL(teacher || student), not KL(student || teacher)
    reverse = (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
               + 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)) / 2
    assert abs(reverse - (frame1 + frame2) / 2) > 0.03
    assert loss.item() != pytest.approx(reverse, abs=1e-2)


def test_matches_definition_on_random_utterance():
    s, t = logp(1, 3, 4, seed=2), logp(1, 3, 4, seed=3)
    expected = kl_rows(t[0], s[0]).mean()
    assert torch.allclose(ctc_posterior_kl(s, t, torch.ones(1)), expected, atol=1e-6)


def test_unnormalised_scores_are_normalised_first():
    s, t = logp(1, 3, 4, seed=2), logp(1, 3, 4, seed=3)
    base = ctc_posterior_kl(s, t, torch.ones(1))
    assert torch.allclose(ctc_posterior_kl(s + 5.0, t - 2.0, torch.ones(1)), base, atol=1e-5)


def test_gradient_reaches_only_the_student():
    s = logp(2, 5, 4, seed=4).requires_grad_(True)
    t = logp(2, 5, 4, seed=5).requires_grad_(True)
    ctc_posterior_kl(s, t, torch.tensor([1.0, 0.6])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    assert torch.all(s.grad[1, 3:] == 0)  # padded student frames get no gradient either


def test_padding_frames_change_nothing():
    s, t = logp(2, 10, 6, seed=6), logp(2, 10, 6, seed=7)
    lens = torch.tensor([1.0, 0.5])  # second utterance: 5 valid frames
    for norm in ("frames", "utterances"):
        base = ctc_posterior_kl(s, t, lens, normalisation=norm)
        s2, t2 = s.clone(), t.clone()
        s2[1, 5:] = logp(5, 6, seed=8)
        assert torch.allclose(ctc_posterior_kl(s2, t, lens, normalisation=norm), base)
        t2[1, 5:] = logp(5, 6, seed=9)
        assert torch.allclose(ctc_posterior_kl(s, t2, lens, normalisation=norm), base)
        assert torch.allclose(ctc_posterior_kl(s2, t2, lens, normalisation=norm), base)
        s3 = s.clone()
        s3[1, 4] = logp(6, seed=10)  # the last valid frame does count
        assert not torch.allclose(ctc_posterior_kl(s3, t, lens, normalisation=norm), base)


def test_valid_frame_mask():
    mask = valid_frame_mask(torch.tensor([1.0, 0.5, 0.01]), 10)
    assert mask.tolist()[0] == [True] * 10
    assert mask.sum(1).tolist() == [10, 5, 1]  # at least one frame
    assert mask[1, :5].all() and not mask[1, 5:].any()


def test_normalisations():
    s, t = logp(2, 4, 3, seed=10), logp(2, 4, 3, seed=11)
    lens = torch.tensor([1.0, 0.5])  # 4 and 2 valid frames
    per_frame = kl_rows(t, s)
    frames = (per_frame[0].sum() + per_frame[1, :2].sum()) / 6  # every valid frame weighs the same
    utts = (per_frame[0].mean() + per_frame[1, :2].mean()) / 2  # every utterance weighs the same
    assert not torch.allclose(frames, utts, atol=1e-4)  # the example tells them apart
    assert torch.allclose(ctc_posterior_kl(s, t, lens), frames, atol=1e-6)  # "frames" is the default
    assert torch.allclose(ctc_posterior_kl(s, t, lens, normalisation="frames"), frames, atol=1e-6)
    assert torch.allclose(ctc_posterior_kl(s, t, lens, normalisation="utterances"), utts, atol=1e-6)


@pytest.mark.parametrize("temp", [0.5, 2.0, 4.0])
def test_temperature_scaling(temp):
    s, t = logp(1, 3, 4, seed=12), logp(1, 3, 4, seed=13)
    ss, tt = torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)
    soft = kl_rows(tt[0], ss[0]).mean()
    expected = soft * temp**2
    got = ctc_posterior_kl(s, t, torch.ones(1), temperature=temp)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, soft, atol=1e-4)  # the T^2 factor is there
    assert torch.allclose(posterior_kl(s[0], t[0], temperature=temp), expected, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"differ in shape.*\(1, 3, 4\).*\(1, 3, 5\)"):
        ctc_posterior_kl(logp(1, 3, 4), logp(1, 3, 5), torch.ones(1))
    with pytest.raises(ValueError, match="differ in shape"):
        ctc_posterior_kl(logp(1, 3, 4), logp(1, 4, 4), torch.ones(1))
    with pytest.raises(ValueError, match="normalisation 'tokens'"):
        ctc_posterior_kl(logp(1, 3, 4), logp(1, 3, 4), torch.ones(1), normalisation="tokens")
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            ctc_posterior_kl(logp(1, 3, 4), logp(1, 3, 4), torch.ones(1), temperature=bad)
    with pytest.raises(ValueError, match="differ in shape"):
        posterior_kl(logp(2, 4), logp(2, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32(dtype):
    s, t = logp(2, 6, 30, seed=1), logp(2, 6, 30)
    lens = torch.tensor([1.0, 0.5])
    out = ctc_posterior_kl(s.to(dtype), t.to(dtype), lens)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    reference = ctc_posterior_kl(s.to(dtype).float(), t.to(dtype).float(), lens)
    assert torch.allclose(out, reference, atol=1e-6)  # computed in float32 from the rounded inputs
    assert torch.allclose(out, ctc_posterior_kl(s, t, lens), rtol=0.05)


def test_utterance_level_kl():
    s, t = logp(3, 5, seed=14), logp(3, 5, seed=15)
    assert posterior_kl(t.clone(), t).abs() < 1e-6
    assert torch.allclose(posterior_kl(s, t), kl_rows(t, s).mean(), atol=1e-6)
    p, q = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.2, 0.5, 0.3]])
    by_hand = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    assert posterior_kl(q.log(), p.log()).item() == pytest.approx(by_hand, abs=1e-6)
    s_grad, t_grad = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    posterior_kl(s_grad, t_grad).backward()
    assert s_grad.grad is not None and t_grad.grad is None
