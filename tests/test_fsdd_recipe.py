"""End-to-end runs of the FSDD recipe on real speech with a tiny model: prep, fit, depth sweep, outputs,
teacher freezing, and the clear errors promised for bad inputs."""

import importlib.util
import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_FSDD, tiny

from dld_brain.recipe import run_asr_recipe
from dld_brain.teacher import find_checkpoint

TRAIN = str(REPO / "recipes" / "FSDD" / "train.py")
HP = REPO / "hparams" / "fsdd"


def recipe_args(method, root, fsdd_dir, *extra, **changes):
    return [str(HP / f"{method}.yaml"), f"--experiment_root={root}", f"--data_folder={fsdd_dir}",
            *tiny(**changes), *extra]


def run_cli(args):
    """The recipe as a user runs it; returns (exit code, stderr)."""
    proc = subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, cwd=REPO)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fsdd_dir):
    """Teacher then DLD trained in-process on real FSDD audio (tiny model, one epoch each)."""
    root = tmp_path_factory.mktemp("fsdd")
    prepare = load_recipe().prepare  # the recipe's own preparation function
    teacher = run_asr_recipe(recipe_args("teacher", root, fsdd_dir), prepare)
    dld = run_asr_recipe(recipe_args("dld", root, fsdd_dir), prepare)
    return root, teacher, dld


def load_recipe():
    """recipes/FSDD/train.py as a module (its __main__ block does not run)."""
    spec = importlib.util.spec_from_file_location("fsdd_recipe_train", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_outputs_of_every_stage(trained):
    root, _, _ = trained
    for split in ("train", "valid", "test"):
        table = pd.read_csv(root / "prepared" / f"{split}.csv")
        assert list(table.columns) == ["ID", "duration", "wav", "spk_id", "wrd"] and len(table) > 0
    for method in ("teacher", "dld"):
        out = root / method
        sweep = pd.read_csv(out / "depth_sweep_test.csv")
        assert sweep["depth"].tolist() == [1, 2, 3, 4]
        assert sweep["encoder_params"].is_monotonic_increasing
        assert (sweep["WER"] >= 0).all() and (sweep["encoder_latency_ms"] > 0).all()
        for depth in range(1, 5):
            text = (out / f"wer_test_n{depth}.txt").read_text()
            assert "%WER" in text
        assert (out / "depth_sweep_test.md").read_text().startswith("| method |")
        assert (out / "hyperparams.yaml").is_file() and (out / "train_log.txt").is_file()
    assert "kd_loss" in (root / "dld" / "train_log.txt").read_text()
    assert "kd_loss" not in (root / "teacher" / "train_log.txt").read_text()


def test_teacher_frozen_and_student_initialised_from_it(trained):
    root, _, dld = trained
    ckpt = find_checkpoint(root / "teacher")
    saved = torch.load(ckpt / "model.ckpt")
    teacher = dld.teacher["model"]
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, saved[name]), f"teacher parameter {name} changed during student training"
    student = dld.modules.model.state_dict()
    assert any(not torch.equal(student[n], saved[n]) for n in saved), "the student did not train"
    assert dld.teacher_ckpt == ckpt
    assert "teacher" not in dld.checkpointer.recoverables and all(
        m is not teacher for m in dld.modules.values())


def test_comparison_table_and_plot(trained, tmp_path):
    from dld_brain.report import write_comparison

    root, _, _ = trained
    md = write_comparison([root / "teacher" / "depth_sweep_test.csv", root / "dld" / "depth_sweep_test.csv"],
                          tmp_path)
    text = md.read_text()
    assert "| test_set | depth | enc. params (M) | teacher | dld |" in text
    assert (tmp_path / "comparison_test.png").stat().st_size > 1000


def test_missing_data_folder_is_a_clear_error(tmp_path):
    code, err = run_cli([str(HP / "teacher.yaml"), f"--experiment_root={tmp_path}",
                         f"--data_folder={tmp_path / 'nowhere'}", "--fallback_data_folders=[]", *TINY_FSDD])
    assert code == 2
    assert "FSDD not found" in err and str(tmp_path / "nowhere") in err and "Traceback" not in err


def test_unreadable_audio_is_named(tmp_path, fsdd_dir):
    copy = tmp_path / "fsdd" / "recordings"
    shutil.copytree(fsdd_dir / "recordings", copy)
    (copy / "3_theo_1.wav").write_bytes(b"not a wav file at all")
    code, err = run_cli(recipe_args("teacher", tmp_path / "exp", tmp_path / "fsdd"))
    assert code == 2 and "3_theo_1.wav" in err and "Traceback" not in err


def test_missing_teacher_is_a_clear_error(tmp_path, fsdd_dir):
    code, err = run_cli(recipe_args("dld", tmp_path, fsdd_dir))
    assert code == 2 and "teacher checkpoint not found" in err and str(tmp_path / "teacher") in err


def test_teacher_of_another_architecture_is_rejected(trained, tmp_path, fsdd_dir):
    root, _, _ = trained
    code, err = run_cli(recipe_args("dld", tmp_path, fsdd_dir, f"--teacher_checkpoint={root / 'teacher'}",
                                    d_model=48))
    assert code == 2 and "another architecture" in err and "shape" in err
    code, err = run_cli(recipe_args("dld", tmp_path, fsdd_dir, f"--teacher_checkpoint={root / 'teacher'}",
                                    num_layers=3))
    assert code == 2 and "4 encoder layers but the student has 3" in err


def test_depth_out_of_range_is_a_clear_error_before_training(tmp_path, fsdd_dir):
    code, err = run_cli(recipe_args("teacher", tmp_path, fsdd_dir, "--sweep_depths=[9]"))
    assert code == 2 and "sweep_depths: depth 9 is out of range" in err and "4 layers" in err
    assert not (tmp_path / "prepared").exists()  # failed before data preparation and training


def test_unknown_key_is_a_clear_error(tmp_path, fsdd_dir):
    code, err = run_cli(recipe_args("teacher", tmp_path, fsdd_dir, "--kd_wieght=1"))
    assert code == 2 and "kd_wieght" in err


def test_ddp_with_skipped_layers_two_cpu_processes(trained, tmp_path, fsdd_dir):
    """torchrun with 2 processes (gloo): random layer dropping + KD must not break DDP's gradient sync."""
    root, _, _ = trained
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", TRAIN,
           *recipe_args("dld", tmp_path, fsdd_dir, f"--teacher_checkpoint={root / 'teacher'}",
                        "--distributed_backend=gloo", number_of_epochs=2, batch_size=4)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "dld" / "train_log.txt").read_text()
    assert "epoch: 2" in log and "kd_loss" in log
    assert pd.read_csv(tmp_path / "dld" / "depth_sweep_test.csv")["depth"].tolist() == [1, 2, 3, 4]


def test_bf16_dld_keeps_the_kd_loss_finite(trained, tmp_path, fsdd_dir):
    root, _, _ = trained
    code, err = run_cli(recipe_args("dld", tmp_path, fsdd_dir, f"--teacher_checkpoint={root / 'teacher'}",
                                    "--precision=bf16", sweep_depths="[4]"))
    assert code == 0, err[-2000:]
    log = (tmp_path / "dld" / "train_log.txt").read_text()
    kd = [float(part.split("kd_loss: ")[1].split(" ")[0].rstrip(",")) for part in log.splitlines()
          if "kd_loss: " in part]
    assert kd and all(math.isfinite(v) and v >= 0 for v in kd)
