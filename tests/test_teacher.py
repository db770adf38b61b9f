"""Finding, checking and freezing the teacher checkpoint; method configuration checks."""

import pytest
import torch
from speechbrain.processing.features import InputNormalization
from speechbrain.utils.checkpoints import Checkpointer

from dld_brain.brain import MethodConfigError, check_method_config
from dld_brain.lobes import ConformerCTC
from dld_brain.teacher import TeacherError, find_checkpoint, load_teacher


def tiny(**kw):
    cfg = dict(n_mels=16, vocab_size=8, d_model=32, num_layers=4, nhead=2, d_ffn=64, kernel_size=3)
    torch.manual_seed(kw.pop("seed", 0))
    return ConformerCTC(**{**cfg, **kw})


def save_run(folder, wers=(30.0,), **kw):
    model, norm = tiny(**kw), InputNormalization()
    norm.train()
    norm(torch.randn(2, 10, 16), torch.ones(2))
    ckpt = Checkpointer(folder / "save", recoverables={"model": model, "normalize": norm})
    for wer in wers:
        ckpt.save_checkpoint(meta={"WER": wer})
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
    return model, norm


def test_find_checkpoint_forms_and_best_wer(tmp_path):
    save_run(tmp_path, wers=(30.0, 10.0, 20.0))
    best = find_checkpoint(tmp_path)
    assert "10.0" in (best / "CKPT.yaml").read_text()
    assert find_checkpoint(tmp_path / "save") == best == find_checkpoint(best)
    with pytest.raises(TeacherError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="no SpeechBrain checkpoint"):
        find_checkpoint(tmp_path / "empty")


def test_load_teacher_frozen_copies(tmp_path):
    model, norm = save_run(tmp_path)
    saved = torch.load(find_checkpoint(tmp_path) / "model.ckpt")
    student = {"model": tiny(seed=1), "normalize": InputNormalization()}
    teacher, _ = load_teacher(student, tmp_path)
    assert not teacher["model"].training and not any(p.requires_grad for p in teacher["model"].parameters())
    assert all(torch.equal(v, saved[k]) for k, v in teacher["model"].state_dict().items())
    assert teacher["model"] is not student["model"]
    assert torch.allclose(teacher["normalize"].glob_mean, norm.glob_mean)


@pytest.mark.parametrize("change, message", [
    (dict(d_model=48), r"another architecture: .* has shape"),
    (dict(num_layers=3), "teacher .* has 4 encoder layers but the student has 3"),
    (dict(vocab_size=9), "output vocabulary of 8 units but the student has 9.*tokenizer"),
])
def test_incompatible_teacher(tmp_path, change, message):
    save_run(tmp_path)
    student = {"model": tiny(**change), "normalize": InputNormalization()}
    with pytest.raises(TeacherError, match=message):
        load_teacher(student, tmp_path)


def test_missing_or_corrupt_teacher_files(tmp_path):
    save_run(tmp_path)
    ckpt = find_checkpoint(tmp_path)
    (ckpt / "model.ckpt").write_bytes(b"garbage")
    with pytest.raises(TeacherError, match="unreadable"):
        load_teacher({"model": tiny(), "normalize": InputNormalization()}, tmp_path)
    (ckpt / "model.ckpt").unlink()
    with pytest.raises(TeacherError, match="file missing: .*model.ckpt"):
        load_teacher({"model": tiny(), "normalize": InputNormalization()}, tmp_path)


@pytest.mark.parametrize("hparams, message", [
    (dict(kd_weight=1.0), "kd_weight > 0 .* needs teacher_checkpoint"),
    (dict(init_from_teacher=True), "init_from_teacher: True needs teacher_checkpoint"),
    (dict(kd_weight=-1.0, teacher_checkpoint="x"), "kd_weight must be >= 0"),
])
def test_method_config_errors(hparams, message):
    with pytest.raises(MethodConfigError, match=message):
        check_method_config(hparams)
