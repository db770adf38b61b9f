"""ASKD: schedule values, adaptive rules, self-KD targets without gradient, and a real-audio DLD+ASKD run
whose train log holds the configured weights."""

import math
import re

import pandas as pd
import pytest
import torch
from conftest import REPO, tiny

from dld_brain.askd import (
    ASKD,
    AgreementRule,
    ASKDConfigError,
    ValidationGainRule,
    WeightSchedule,
    masked_kl,
    top1_agreement,
    update_ema,
)
from dld_brain.lobes import ConformerCTC
from dld_brain.losses import ctc_posterior_kl


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_schedule_values_at_given_progress(unit):
    def at(schedule, t):  # epoch is 1-based in SpeechBrain, steps are 0-based
        return schedule.at(epoch=t + 1, step=0) if unit == "epoch" else schedule.at(epoch=1, step=t)

    constant = WeightSchedule("constant", start=0.7, unit=unit)
    assert [at(constant, t) for t in (0, 5, 100)] == [0.7, 0.7, 0.7]
    linear = WeightSchedule("linear", start=1.0, end=0.0, unit=unit, total=4)
    assert [at(linear, t) for t in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    rising = WeightSchedule("linear", start=0.0, end=2.0, unit=unit, total=10)
    assert at(rising, 5) == pytest.approx(1.0)
    cosine = WeightSchedule("cosine", start=1.0, end=0.2, unit=unit, total=4)
    assert [at(cosine, t) for t in range(6)] == pytest.approx(
        [0.2 + 0.8 * (1 + math.cos(math.pi * min(t / 4, 1))) / 2 for t in range(6)])
    assert at(cosine, 2) == pytest.approx(0.6) and at(cosine, 4) == pytest.approx(0.2)
    step = WeightSchedule("step", start=1.0, unit=unit, milestones=[2, 5], gamma=0.5)
    assert [at(step, t) for t in range(7)] == pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_schedule_errors_name_the_key():
    with pytest.raises(ASKDConfigError, match="schedule kind.*'exp'"):
        WeightSchedule("exp")
    with pytest.raises(ASKDConfigError, match="schedule unit"):
        WeightSchedule("constant", unit="minute")
    with pytest.raises(ASKDConfigError, match="total"):
        WeightSchedule("cosine")
    with pytest.raises(ASKDConfigError, match="milestones"):
        WeightSchedule("step")
    with pytest.raises(ASKDConfigError, match="self_source"):
        ASKD(self_source="teacher")


def test_adaptive_rules():
    rule = ValidationGainRule(min_gain=0.05, decay=0.5, floor=0.2)
    for wer, factor in [(50.0, 1.0), (40.0, 1.0), (39.0, 0.5), (41.0, 0.25), (20.0, 0.25), (20.0, 0.2)]:
        rule.end_valid_epoch(wer)
        assert rule.factor == pytest.approx(factor)
    agree = AgreementRule(target=0.8, floor=0.1)
    for g in (0.9, 0.96):
        agree.observe_batch(g)
    agree.end_train_epoch()
    assert agree.factor == pytest.approx((1 - 0.93) / 0.2)
    agree.observe_batch(0.5)
    agree.end_train_epoch()
    assert agree.factor == 1.0  # the student still disagrees: the teacher keeps its full weight
    askd = ASKD(WeightSchedule("constant", 2.0), adaptive=ValidationGainRule(min_gain=0.1, decay=0.5))
    askd.end_valid_epoch(10.0)
    askd.end_valid_epoch(10.0)
    assert askd.weights(epoch=3) == (1.0, 0.0)
    assert askd.epoch_stats() == {"w_teacher": 1.0, "w_self": 0.0, "askd_factor": 0.5}


def tiny_model(drop_prob=0.5):
    torch.manual_seed(0)
    return ConformerCTC(n_mels=20, vocab_size=7, d_model=16, num_layers=4, nhead=2, d_ffn=32, kernel_size=3,
                        drop_prob=drop_prob, gate_seed=3)


def test_full_depth_targets_carry_no_gradient():
    model = tiny_model().train()
    askd = ASKD(self_schedule=WeightSchedule("constant", 1.0), self_source="full_depth")
    askd.attach(model)
    feats, lens = torch.randn(2, 40, 20), torch.tensor([1.0, 0.7])
    student = model(feats, lens)  # sampled gates
    sampled = model.encoder.last_layers
    assert len(sampled) < 4, "pick a gate seed that drops a layer"
    with askd.target_model(model) as source:
        assert not source.training
        target = source(feats, lens, layers=[0, 1, 2, 3])
    assert model.training  # restored
    assert not target.requires_grad and target.grad_fn is None
    ctc_posterior_kl(student, target, lens).backward()
    for i, layer in enumerate(model.encoder.layers):
        grads = [p.grad for p in layer.parameters()]
        if i in sampled:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:  # only the full-depth (target) path ran this layer: no gradient reached it
            assert all(g is None for g in grads), f"layer {i} got gradient through the self-KD target"


def test_ema_targets_carry_no_gradient_and_follow_the_student():
    model = tiny_model(drop_prob=0.0).train()
    askd = ASKD(self_schedule=WeightSchedule("constant", 1.0), self_source="ema", ema_decay=0.9)
    askd.attach(model)
    assert all(not p.requires_grad for p in askd.ema.parameters())
    feats, lens = torch.randn(2, 40, 20), torch.tensor([1.0, 0.7])
    with askd.target_model(model) as source:
        assert source is askd.ema
        target = source(feats, lens)
    assert not target.requires_grad
    student = model(feats, lens)
    ctc_posterior_kl(student, target, lens).backward()
    assert all(p.grad is None for p in askd.ema.parameters())
    before = {n: p.clone() for n, p in askd.ema.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    askd.after_batch(model)
    assert askd.step == 1
    for (name, ema_p), stu_p in zip(askd.ema.named_parameters(), model.parameters()):
        assert torch.allclose(ema_p, 0.9 * before[name] + 0.1 * stu_p)
    update_ema(askd.ema, model, 0.0)
    assert all(torch.equal(e, s) for e, s in zip(askd.ema.parameters(), model.parameters()))


def test_masked_kl_and_agreement():
    student = torch.randn(2, 5, 4, requires_grad=True)
    target = student.detach().clone()
    target.requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert masked_kl(student, target, mask).abs() < 1e-6
    masked_kl(student, target + torch.randn_like(target), mask).backward()
    assert target.grad is None and student.grad is not None
    assert top1_agreement(student, student) == 1.0
    assert top1_agreement(student, -student, mask) == 0.0


def test_askd_state_is_checkpointed(tmp_path):
    model = tiny_model(drop_prob=0.0)
    askd = ASKD(self_schedule=WeightSchedule("constant", 1.0), self_source="ema",
                adaptive=ValidationGainRule(min_gain=0.5, decay=0.5))
    askd.attach(model)
    askd.end_valid_epoch(10.0)
    askd.end_valid_epoch(9.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    askd.after_batch(model)
    askd._save(tmp_path / "askd.ckpt")
    fresh = ASKD(self_schedule=WeightSchedule("constant", 1.0), self_source="ema",
                 adaptive=ValidationGainRule(min_gain=0.5, decay=0.5))
    fresh.attach(tiny_model(drop_prob=0.0))
    fresh._load(tmp_path / "askd.ckpt")
    assert fresh.step == 1 and fresh.factor == 0.5 and fresh.adaptive.best == 9.0
    assert all(torch.equal(a, b) for a, b in zip(fresh.ema.parameters(), askd.ema.parameters()))


ASKD_YAML = """extends: {base}
askd: !new:dld_brain.askd.ASKD
    teacher_schedule: !new:dld_brain.askd.WeightSchedule
        kind: linear
        start: 1.0
        end: 0.0
        unit: step
        total: 4
    self_schedule: !new:dld_brain.askd.WeightSchedule
        kind: step
        start: 0.5
        unit: epoch
        milestones: [1]
        gamma: 2.0
    self_source: full_depth
    adaptive: !new:dld_brain.askd.AgreementRule
        target: 0.5
        floor: 1.0
"""


def test_dld_askd_on_real_audio_logs_the_configured_weights(tmp_path, fsdd_dir):
    """Teacher then DLD+ASKD (2 epochs, tiny model) on FSDD: the train log holds the epoch means of the
    scheduled weights, the agreement and the self-KD loss; the ASKD state is in the checkpoint."""
    from test_fsdd_recipe import load_recipe, recipe_args

    from dld_brain.recipe import run_asr_recipe

    prepare = load_recipe().prepare
    run_asr_recipe(recipe_args("teacher", tmp_path, fsdd_dir), prepare)
    hp = tmp_path / "dld_askd_test.yaml"
    hp.write_text(ASKD_YAML.format(base=REPO / "hparams" / "fsdd" / "dld_askd.yaml"))
    args = [str(hp), f"--experiment_root={tmp_path}", f"--data_folder={fsdd_dir}", *tiny(number_of_epochs=2)]
    brain = run_asr_recipe(args, prepare)
    steps = math.ceil(len(pd.read_csv(tmp_path / "prepared" / "train.csv")) / 8)
    expected_teacher = [sum(max(1 - s / 4, 0) for s in range(e * steps, (e + 1) * steps)) / steps for e in (0, 1)]
    log = (tmp_path / "dld_askd" / "train_log.txt").read_text().splitlines()
    assert len(log) >= 2
    for line, w_teacher, w_self in zip(log, expected_teacher, (0.5, 1.0)):
        values = dict(re.findall(r"(\w+): ([-+\d.e]+)", line))
        assert float(values["w_teacher"]) == pytest.approx(w_teacher, rel=6e-3)
        assert float(values["w_self"]) == pytest.approx(w_self)
        assert 0 <= float(values["agreement"]) <= 1 and float(values["self_kd_loss"]) >= 0
        assert float(values["askd_factor"]) == 1.0
    assert brain.askd.step == 2 * steps
    assert list((tmp_path / "dld_askd" / "save").glob("CKPT+*/askd.ckpt"))
