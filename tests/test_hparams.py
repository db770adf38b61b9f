"""Hyperparameter inheritance (extends / new_keys), strict keys and overrides."""

import pytest
from conftest import REPO

from dld_brain.hparams import HparamsError, load_hparams, resolved_yaml_text

HP = REPO / "hparams"


def test_method_file_resolution_and_overrides():
    h = load_hparams(HP / "fsdd" / "dld.yaml", "number_of_epochs: 3\nnum_layers: 4")
    assert h["method"] == "dld" and h["drop_prob"] == 0.5 and h["kd_weight"] == 1.0
    assert h["model"].encoder.drop_prob == 0.5 and h["model"].encoder.num_layers == 4
    assert h["epoch_counter"].limit == 3 and h["valid_depths"] == [2, 4]
    assert h["teacher_checkpoint"] == "results/fsdd/teacher"
    assert h["compute_features"].compute_fbanks.n_mels == 40  # FSDD overrides the paper's 80
    paper = load_hparams(HP / "dld_conformer.yaml", {"data_folder": "/data/LibriSpeech"})
    assert paper["model"].encoder.num_layers == 12 and paper["vocab_size"] == 256
    assert 31e6 < sum(p.numel() for p in paper["model"].parameters()) < 32.5e6


@pytest.mark.parametrize("path", sorted(str(p.relative_to(HP)) for p in HP.rglob("*.yaml")
                                        if "base" not in p.name))
def test_every_method_file_loads(path):
    h = load_hparams(HP / path, {"data_folder": "/tmp/x"})
    assert h["method"] in ("teacher", "rdsc", "rdld", "dld")
    assert (h["drop_prob"] > 0) == (h["method"] != "teacher")
    assert (h["kd_weight"] > 0) == (h["method"] == "dld")
    assert bool(h["teacher_checkpoint"]) == h["init_from_teacher"] == (h["method"] in ("rdld", "dld"))


def test_unknown_override_key_is_named():
    with pytest.raises(HparamsError, match="nuber_of_epochs"):
        load_hparams(HP / "fsdd" / "dld.yaml", "nuber_of_epochs: 3")
    with pytest.raises(HparamsError, match="given twice|invalid"):
        load_hparams(HP / "fsdd" / "dld.yaml", "seed: 1\nseed: 2")


def test_misspelt_key_in_a_method_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("lr: 0.1\nepochs: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nepoch: 3\n")
    with pytest.raises(HparamsError, match=r"child.yaml: keys \['epoch'\] are not defined in its base"):
        load_hparams(child)
    child.write_text("extends: base.yaml\nnew_keys: [epoch]\nepoch: 3\n")
    assert load_hparams(child) == {"lr": 0.1, "epochs": 2, "epoch": 3}


def test_objects_are_replaced_whole_not_merged(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "aug: !new:speechbrain.augment.freq_domain.SpectrogramDrop\n    drop_count_high: 7\n    dim: 2\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\naug: !new:speechbrain.augment.time_domain.SpeedPerturb\n    orig_freq: 16000\n")
    assert type(load_hparams(tmp_path / "child.yaml")["aug"]).__name__ == "SpeedPerturb"


def test_missing_file_and_resolved_text():
    with pytest.raises(HparamsError, match="not found"):
        load_hparams(HP / "nope.yaml")
    text = resolved_yaml_text(HP / "fsdd" / "dld.yaml", "number_of_epochs: 3")
    assert "number_of_epochs: 3" in text and "extends" not in text and "kd_weight: 1.0" in text
