"""Hyperparameter inheritance (extends / new_keys), strict keys and overrides."""

import pytest
from conftest import REPO

from dld_brain.hparams import HparamsError, load_hparams, resolved_yaml_text

HP = REPO / "hparams"
DLD = HP / "fsdd" / "dld.yaml"


def test_dld_file_resolves_its_extends_chain():
    h = load_hparams(DLD)
    assert h["method"] == "dld" and h["drop_prob"] == 0.5 and h["kd_weight"] == 1.0
    assert h["init_from_teacher"] is True
    assert h["model"].encoder.drop_prob == 0.5  # !ref <drop_prob> reached the model
    assert h["teacher_checkpoint"] == "results/fsdd/teacher"  # !ref <experiment_root>/teacher resolved
    assert h["output_folder"] == "results/fsdd/dld"
    assert h["number_of_epochs"] == 10 and h["epoch_counter"].limit == 10  # dld.yaml over base.yaml
    assert h["num_layers"] == 6 and h["model"].encoder.num_layers == 6  # fsdd/base.yaml over conformer_base
    assert h["valid_depths"] == "all"
    assert h["compute_features"].compute_fbanks.n_mels == 40  # FSDD overrides the paper's 80
    assert h["vocab_size"] == 17 and h["model"].ctc_head.out_features == 17


def test_overrides_are_applied_and_propagate_through_refs():
    h = load_hparams(DLD, "number_of_epochs: 3\nnum_layers: 4\nd_model: 48\nexperiment_root: /tmp/exp")
    assert h["number_of_epochs"] == 3 and h["epoch_counter"].limit == 3
    assert h["model"].encoder.num_layers == 4
    paper = load_hparams(HP / "dld_conformer.yaml", "num_layers: 4\ndata_folder: /tmp/x")
    assert paper["valid_depths"] == [2, 4]  # [!ref <num_layers> // 2, !ref <num_layers>]
    assert h["model"].ctc_head.in_features == 48
    assert h["teacher_checkpoint"] == "/tmp/exp/teacher" and h["save_folder"] == "/tmp/exp/dld/save"
    as_dict = load_hparams(DLD, {"number_of_epochs": 2, "drop_prob": 0.25, "num_layers": 4})
    assert as_dict["epoch_counter"].limit == 2 and as_dict["model"].encoder.drop_prob == 0.25
    nested = load_hparams(DLD, "train_dataloader_opts:\n    batch_size: 3\nnum_layers: 2")
    assert nested["train_dataloader_opts"]["batch_size"] == 3
    assert nested["train_dataloader_opts"]["num_workers"] == 0  # a nested override merges, not replaces


def test_paper_configuration():
    paper = load_hparams(HP / "dld_conformer.yaml", {"data_folder": "/data/LibriSpeech"})
    assert paper["model"].encoder.num_layers == 12 and paper["vocab_size"] == 256
    assert 31e6 < sum(p.numel() for p in paper["model"].parameters()) < 32.5e6


@pytest.mark.parametrize("path", sorted(str(p.relative_to(HP)) for p in HP.rglob("*.yaml")
                                        if "base" not in p.name and p.parent.name != "whisper"
                                        and not p.name.endswith("_wavlm.yaml")  # hub models: see test_wavlm.py
                                        and "pretrained" not in p.name))  # and test_pretrained.py
def test_every_method_file_loads(path, tmp_path):
    h = load_hparams(HP / path, {"data_folder": "/tmp/x", "num_layers": 2, "d_model": 32, "nhead": 2,
                                 "d_ffn": 64, "experiment_root": str(tmp_path)})
    assert h["method"] in ("teacher", "rdsc", "rdld", "dld", "rd", "dld_askd", "selector")  # rd: SLU random dropping
    assert (h["drop_prob"] > 0) == (h["method"] != "teacher")
    assert h["model"].encoder.drop_prob == h["drop_prob"]
    assert (h["kd_weight"] > 0) == (h["method"] in ("dld", "dld_askd"))
    assert bool(h["teacher_checkpoint"]) == h["init_from_teacher"] == (h["method"] in ("rdld", "dld", "dld_askd"))


@pytest.mark.parametrize("overrides, key", [
    ("nuber_of_epochs: 3", "nuber_of_epochs"),
    ({"kd_weigth": 1.0}, "kd_weigth"),
    ("train_dataloader_opts:\n    batch_sise: 3", "train_dataloader_opts.batch_sise"),
])
def test_unknown_override_key_is_named(overrides, key):
    with pytest.raises(HparamsError, match=f"'{key}'"):
        load_hparams(DLD, overrides)


def test_repeated_override_key_is_an_error():
    with pytest.raises(HparamsError, match="given twice|invalid"):
        load_hparams(DLD, "seed: 1\nseed: 2")


def test_misspelt_key_in_a_method_file(tmp_path):
    method = tmp_path / "my_dld.yaml"
    method.write_text(f"extends: {HP / 'fsdd' / 'base.yaml'}\nmethod: dld\ndrop_prb: 0.5\n")
    with pytest.raises(HparamsError) as info:
        load_hparams(method)
    message = str(info.value)
    assert str(method) in message and "'drop_prb'" in message
    method.write_text(f"extends: {HP / 'fsdd' / 'base.yaml'}\nmethod: dld\ndrop_prob: 0.5\n")
    assert load_hparams(method)["model"].encoder.drop_prob == 0.5  # spelt right, it loads


def test_new_keys_and_relative_extends(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("lr: 0.1\nepochs: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nepoch: 3\n")
    with pytest.raises(HparamsError, match=r"child.yaml: keys \['epoch'\] are not defined in its base"):
        load_hparams(child)
    child.write_text("extends: base.yaml\nnew_keys: [epoch]\nepoch: 3\nlr: 0.5\n")
    assert load_hparams(child) == {"lr": 0.5, "epochs": 2, "epoch": 3}
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text("extends: child.yaml\nepoch: 4\n")  # keys added by the parent are known here
    assert load_hparams(grandchild) == {"lr": 0.5, "epochs": 2, "epoch": 4}


def test_objects_are_replaced_whole_not_merged(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "aug: !new:speechbrain.augment.freq_domain.SpectrogramDrop\n    drop_count_high: 7\n    dim: 2\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\naug: !new:speechbrain.augment.time_domain.SpeedPerturb\n    orig_freq: 16000\n")
    assert type(load_hparams(tmp_path / "child.yaml")["aug"]).__name__ == "SpeedPerturb"


def test_missing_files(tmp_path):
    with pytest.raises(HparamsError, match="not found.*nope.yaml"):
        load_hparams(HP / "nope.yaml")
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("extends: missing_base.yaml\nmethod: dld\n")
    with pytest.raises(HparamsError, match="not found.*missing_base.yaml"):
        load_hparams(orphan)


def test_resolved_text_holds_the_overridden_value(tmp_path):
    text = resolved_yaml_text(DLD, "number_of_epochs: 3\nnum_layers: 2")
    lines = text.splitlines()
    assert "number_of_epochs: 3" in lines and "number_of_epochs: 10" not in lines
    assert "extends" not in text and "kd_weight: 1.0" in text and "method: dld" in text
    assert "!ref <number_of_epochs>" in text  # references kept, so the file reloads the same way
    assert "number_of_epochs: 10" in resolved_yaml_text(DLD).splitlines()
    saved = tmp_path / "hyperparams.yaml"
    saved.write_text(text)
    reloaded = load_hparams(saved)  # the saved text rebuilds the same run
    assert reloaded["epoch_counter"].limit == 3 and reloaded["model"].encoder.num_layers == 2
    assert reloaded["method"] == "dld" and reloaded["model"].encoder.drop_prob == 0.5
