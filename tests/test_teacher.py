"""Finding, checking and freezing the teacher checkpoint; method configuration checks."""

import re

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


def student(**kw):
    return {"model": tiny(seed=1, **kw), "normalize": InputNormalization()}


def save_run(folder, wers=(30.0,), **kw):
    """A teacher run folder: ``folder/save/CKPT+...`` with model.ckpt and normalize.ckpt, one per WER.

    Returns the model, the normaliser and the model state saved with each WER (weights change between saves).
    """
    model, norm = tiny(**kw), InputNormalization()
    norm.train()
    norm(torch.randn(2, 10, 16) * 3 + 1, torch.ones(2))  # gives the normaliser statistics
    ckpt = Checkpointer(folder / "save", recoverables={"model": model, "normalize": norm})
    states = {}
    for wer in wers:
        ckpt.save_checkpoint(meta={"WER": wer} if wer is not None else {})
        states[wer] = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
    return model, norm, states


# ---- find_checkpoint ------------------------------------------------------------------------------


def test_find_checkpoint_accepts_ckpt_save_and_run_folders(tmp_path):
    save_run(tmp_path)
    ckpts = list((tmp_path / "save").glob("CKPT+*"))
    assert len(ckpts) == 1
    assert find_checkpoint(tmp_path) == ckpts[0]  # run folder holding save/
    assert find_checkpoint(tmp_path / "save") == ckpts[0]  # the checkpointer's folder
    assert find_checkpoint(ckpts[0]) == ckpts[0]  # one CKPT+ dir
    assert find_checkpoint(str(tmp_path)) == ckpts[0]  # a string path works too


def test_find_checkpoint_picks_the_lowest_wer(tmp_path):
    _, _, states = save_run(tmp_path, wers=(30.0, 10.0, 20.0))
    best = find_checkpoint(tmp_path)
    assert "10.0" in (best / "CKPT.yaml").read_text()
    assert find_checkpoint(tmp_path / "save") == best
    saved = torch.load(best / "model.ckpt")
    assert all(torch.equal(saved[k], v) for k, v in states[10.0].items())


def test_find_checkpoint_without_wer_takes_the_newest(tmp_path):
    save_run(tmp_path, wers=(None, None))
    ckpts = list((tmp_path / "save").glob("CKPT+*"))
    assert len(ckpts) == 2
    newest = max(ckpts, key=lambda p: float(re.search(r"unixtime: ([\d.]+)", (p / "CKPT.yaml").read_text())[1]))
    assert find_checkpoint(tmp_path) == newest


def test_find_checkpoint_errors(tmp_path):
    missing = tmp_path / "no_such_teacher"
    with pytest.raises(TeacherError, match=re.escape(str(missing)) + " does not exist"):
        find_checkpoint(missing)
    empty = tmp_path / "empty"
    (empty / "save").mkdir(parents=True)
    with pytest.raises(TeacherError, match="no SpeechBrain checkpoint.*" + re.escape(str(empty))):
        find_checkpoint(empty)


# ---- load_teacher ---------------------------------------------------------------------------------


def test_load_teacher_returns_frozen_copies_of_the_saved_weights(tmp_path):
    _, norm, states = save_run(tmp_path, wers=(30.0, 12.0))
    modules = student()
    before = {k: v.clone() for k, v in modules["model"].state_dict().items()}
    teacher, ckpt = load_teacher(modules, tmp_path)
    assert ckpt == find_checkpoint(tmp_path) and set(teacher) == {"model", "normalize"}
    model = teacher["model"]
    assert model is not modules["model"] and teacher["normalize"] is not modules["normalize"]
    assert not model.training and not teacher["normalize"].training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.state_dict().keys() == states[12.0].keys()
    assert all(torch.equal(v, states[12.0][k]) for k, v in model.state_dict().items())  # the best checkpoint
    assert all(torch.equal(v, before[k]) for k, v in modules["model"].state_dict().items())  # student untouched
    assert all(p.requires_grad for p in modules["model"].parameters()) and modules["model"].training
    assert torch.allclose(teacher["normalize"].glob_mean, norm.glob_mean)
    assert torch.allclose(teacher["normalize"].glob_std, norm.glob_std)
    assert not torch.allclose(norm.glob_mean, torch.zeros_like(norm.glob_mean))  # real statistics
    feats = torch.randn(2, 40, 16)
    with torch.no_grad():
        reference = tiny(seed=5)
        reference.load_state_dict(states[12.0])
        assert torch.allclose(model(feats, torch.ones(2)), reference.eval()(feats, torch.ones(2)), atol=1e-5)


@pytest.mark.parametrize("change, patterns", [
    (dict(d_model=48), [r"another architecture", r"encoder\.layers\.\S+ has shape \(32,?.*\) there and \(48,?.*\)"
                        r" in the student", "d_model"]),
    (dict(num_layers=3), [r"has 4 encoder layers but the student has 3", "num_layers"]),
    (dict(num_layers=6), [r"has 4 encoder layers but the student has 6"]),
    (dict(vocab_size=9), [r"output vocabulary of 8 units but the student has 9", "tokenizer"]),
    (dict(kernel_size=5), [r"convolution_module\.conv\.weight has shape \(32, 1, 3\) there and \(32, 1, 5\)"]),
])
def test_incompatible_teacher_is_named(tmp_path, change, patterns):
    save_run(tmp_path)
    with pytest.raises(TeacherError) as info:
        load_teacher(student(**change), tmp_path)
    message = str(info.value)
    assert "model.ckpt" in message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)


def test_missing_or_corrupt_teacher_files(tmp_path):
    save_run(tmp_path)
    ckpt = find_checkpoint(tmp_path)
    (ckpt / "model.ckpt").write_bytes(b"\x00garbage, not a torch file\xff" * 10)
    with pytest.raises(TeacherError, match="model.ckpt is unreadable"):
        load_teacher(student(), tmp_path)
    (ckpt / "model.ckpt").unlink()
    with pytest.raises(TeacherError, match=r"file missing: .*model\.ckpt"):
        load_teacher(student(), tmp_path)


def test_missing_normaliser_file(tmp_path):
    save_run(tmp_path)
    (find_checkpoint(tmp_path) / "normalize.ckpt").unlink()
    with pytest.raises(TeacherError, match=r"file missing: .*normalize\.ckpt"):
        load_teacher(student(), tmp_path)


# ---- method configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("hparams, message", [
    (dict(kd_weight=1.0), r"kd_weight > 0 .* needs teacher_checkpoint"),
    (dict(kd_weight=0.5, teacher_checkpoint=None), r"kd_weight > 0 .* needs teacher_checkpoint"),
    (dict(kd_weight=1.0, teacher_checkpoint=""), r"kd_weight > 0 .* needs teacher_checkpoint"),
    (dict(init_from_teacher=True), "init_from_teacher: True needs teacher_checkpoint"),
    (dict(kd_weight=-1.0, teacher_checkpoint="x"), "kd_weight must be >= 0, got -1.0"),
    (dict(kd_weight=-0.1), "kd_weight must be >= 0"),
])
def test_method_config_errors(hparams, message):
    with pytest.raises(MethodConfigError, match=message):
        check_method_config(hparams)


@pytest.mark.parametrize("hparams", [
    {},  # static teacher training
    dict(kd_weight=0.0, init_from_teacher=False, teacher_checkpoint=None),  # RDsc
    dict(kd_weight=0.0, init_from_teacher=True, teacher_checkpoint="results/fsdd/teacher"),  # RDLD
    dict(kd_weight=1.0, init_from_teacher=True, teacher_checkpoint="results/fsdd/teacher"),  # DLD
    dict(kd_weight=None),
])
def test_valid_method_configs_pass(hparams):
    assert check_method_config(hparams) is None


# ---- the teacher's input (kd_teacher_input) -------------------------------------------------------


class SpyThenZero(torch.nn.Module):
    """A SpecAugment stand-in that masks everything, in place like SpeechBrain's SpectrogramDrop; keeps a copy
    of what it was given (the un-masked features)."""

    def forward(self, feats):
        self.seen = feats.clone()
        return feats.masked_fill_(torch.ones_like(feats, dtype=torch.bool), 0.0)


def kd_brain(tmp_path, kind, kd_teacher_input, wav_augment=None):
    """A DLD brain (CTC or classifier) with a saved teacher and the all-masking spec augment above."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.utils.epoch_loop import EpochCounter

    from dld_brain.brain import DynamicDepthCTCBrain
    from dld_brain.lobes.classifier import ConformerClassifier
    from dld_brain.slu_brain import DynamicDepthClassifierBrain

    cfg = dict(n_mels=16, d_model=32, num_layers=4, nhead=2, d_ffn=64, kernel_size=3)
    make = ((lambda: ConformerCTC(vocab_size=8, **cfg)) if kind == "ctc"
            else (lambda: ConformerClassifier(num_classes=3, pool_norm="none", **cfg)))
    torch.manual_seed(0)
    teacher, norm = make(), InputNormalization(norm_type="sentence")
    Checkpointer(tmp_path / "save", recoverables={"model": teacher, "normalize": norm}).save_checkpoint(
        meta={"WER": 10.0})
    torch.manual_seed(1)
    spy = SpyThenZero()
    hparams = dict(compute_features=Fbank(n_mels=16), epoch_counter=EpochCounter(1), spec_augment=[spy],
                   wav_augment=wav_augment, teacher_checkpoint=str(tmp_path), kd_weight=1.0,
                   kd_teacher_input=kd_teacher_input)
    brain_class = DynamicDepthCTCBrain if kind == "ctc" else DynamicDepthClassifierBrain
    modules = {"model": make(), "normalize": InputNormalization(norm_type="sentence")}
    brain = brain_class(modules=modules, hparams=hparams, run_opts={"device": "cpu"})
    return brain, spy


def wav_batch():
    from speechbrain.dataio.batch import PaddedBatch

    gen = torch.Generator().manual_seed(3)
    return PaddedBatch([{"id": "a", "sig": torch.randn(8000, generator=gen)},
                        {"id": "b", "sig": torch.randn(6400, generator=gen)}])


@pytest.mark.parametrize("kind", ["ctc", "classifier"])
def test_teacher_clean_input_gives_targets_of_the_unmasked_features(tmp_path, kind):
    """kd_teacher_input: clean -> the teacher's targets are those of the features before SpecAugment (here a
    mask of everything), augmented -> those of the masked features; the student always gets the masked ones."""
    import speechbrain as sb

    targets = {}
    for source in ("clean", "augmented"):
        brain, spy = kd_brain(tmp_path / source, kind, source)
        brain.modules.eval()  # a deterministic student forward (no dropout); the augmentation follows the stage
        out = brain.compute_forward(wav_batch(), sb.Stage.TRAIN)
        teacher_out = out[2] if kind == "ctc" else out[1]
        lens = torch.tensor([1.0, 0.8])
        with torch.no_grad():
            on_clean = brain.teacher["model"](spy.seen, lens)
            on_masked = brain.teacher["model"](torch.zeros_like(spy.seen), lens)
            student_on_masked = brain.modules.model(torch.zeros_like(spy.seen), lens)
        assert not torch.allclose(on_clean, on_masked, atol=1e-3)  # the masks matter
        expected = on_clean if source == "clean" else on_masked
        assert torch.allclose(teacher_out, expected, atol=1e-5), source
        assert torch.allclose(out[0].detach(), student_on_masked, atol=1e-5)  # the student: masked
        targets[source] = teacher_out
    assert not torch.allclose(targets["clean"], targets["augmented"], atol=1e-3)


def test_teacher_clean_input_keeps_the_waveform_augmentation_frame_aligned(tmp_path):
    """'clean' means unmasked, not un-perturbed: a length-changing waveform augmentation (2x speed-up) is seen by
    the teacher too, so its posteriors have the student's frames."""
    import speechbrain as sb

    brain, spy = kd_brain(tmp_path, "ctc", "clean", wav_augment=lambda wavs: wavs[:, ::2])
    log_probs, _, teacher_out = brain.compute_forward(wav_batch(), sb.Stage.TRAIN)
    assert teacher_out.shape == log_probs.shape
    with torch.no_grad():
        assert torch.allclose(teacher_out, brain.teacher["model"](spy.seen, torch.tensor([1.0, 0.8])), atol=1e-5)
    assert spy.seen.shape[1] < 45  # 0.5 s -> 0.25 s of 10 ms frames: the teacher saw the sped-up audio


def test_teacher_clean_input_bad_value_is_named():
    with pytest.raises(MethodConfigError, match="kd_teacher_input must be one of augmented, clean, got 'raw'"):
        check_method_config(dict(kd_teacher_input="raw"))
