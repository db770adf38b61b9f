"""The LibriSpeech recipe end to end on a LibriSpeech-layout fixture (real FSDD speech), tiny model:
prep, dynamic batching, teacher then DLD, depth sweep per test set, an epoch's checkpoint, checkpoint
averaging, and the cross-domain evaluation on a TED-LIUM 3-layout fixture; plus the TED-LIUM recipe."""

import subprocess
import sys

import pandas as pd
import pytest
from corpus_fixtures import make_librispeech_fixture, make_tedlium3_fixture
from conftest import REPO

TINY = ["--num_layers=4", "--d_model=32", "--nhead=2", "--d_ffn=64", "--kernel_size=3", "--n_mels=40",
        "--token_type=char", "--vocab_size=17", "--number_of_epochs=2", "--warmup_steps=10",
        "--train_dataloader_opts={batch_size: 4, num_workers: 0}",
        "--dynamic_batch_sampler_train={max_batch_length: 15, num_buckets: 2}", "--batch_seconds=15",
        "--device=cpu"]


def run(script, hparams, *args):
    given = {a.split("=", 1)[0] for a in args}
    tiny = [a for a in TINY if a.split("=", 1)[0] not in given]
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / script), str(REPO / "hparams" / hparams),
                           *tiny, *args], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, fsdd_dir):
    root = tmp_path_factory.mktemp("corpora")
    libri = make_librispeech_fixture(root, fsdd_dir, splits=("train-clean-100", "dev-clean", "dev-other",
                                                              "test-clean", "test-other"), utts_per_chapter=4)
    return libri, make_tedlium3_fixture(root, fsdd_dir, splits=("train", "dev", "test"))


def test_librispeech_teacher_dld_and_cross_domain(corpora, tmp_path):
    libri, ted = corpora
    common = [f"--data_folder={libri}", f"--experiment_root={tmp_path}", "--train_splits=[train-clean-100]",
              "--keep_epochs=[1]"]
    run("LibriSpeech/train.py", "teacher_conformer.yaml", *common)
    run("LibriSpeech/train.py", "dld_conformer.yaml", *common)
    for method in ("teacher", "dld"):
        for test_set in ("test-clean", "test-other"):
            sweep = pd.read_csv(tmp_path / method / f"depth_sweep_{test_set}.csv")
            assert sweep["depth"].tolist() == [1, 2, 3, 4] and sweep["method"].eq(method).all()
            assert (tmp_path / method / f"wer_{test_set}_n2.txt").is_file()
    dev = pd.read_csv(tmp_path / "prepared" / "dev.csv")
    assert len(dev) == 16 and dev["wav"].str.contains("dev-other").any()
    assert (tmp_path / "dld" / "inference" / "inference.yaml").is_file()
    # an epoch's checkpoint, checkpoint averaging, and TED-LIUM 3 test without retraining
    run("LibriSpeech/train.py", "dld_conformer.yaml", *common, "--skip_training=True", "--eval_epoch=1")
    assert pd.read_csv(tmp_path / "dld" / "depth_sweep_test-clean_ep1.csv")["depth"].tolist() == [1, 2, 3, 4]
    proc = run("LibriSpeech/train.py", "dld_conformer.yaml", *common, "--skip_training=True",
               "--avg_checkpoints=2", f"--tedlium_folder={ted}")
    assert "Evaluating the average of 2 checkpoints" in proc.stdout + proc.stderr
    cross = pd.read_csv(tmp_path / "dld" / "depth_sweep_tedlium3-test_avg2.csv")
    assert cross["depth"].tolist() == [1, 2, 3, 4]
    outside = (tmp_path / "dld" / "outside_tokenizer_tedlium3-test.txt").read_text()
    assert "IT'S" in outside  # "'" is not in a digit vocabulary: scored (the word is an error), not dropped
    assert not (tmp_path / "dld" / "skipped_tedlium3-test.txt").exists()
    assert (cross["refs_outside_tokenizer"] > 0).all()


def test_tedlium_recipe(corpora, tmp_path):
    _, ted = corpora
    run("TEDLIUM3/train.py", "tedlium3/teacher_conformer.yaml", f"--data_folder={ted}",
        f"--experiment_root={tmp_path}", "--number_of_epochs=1", "--check_audio=full",
        "--vocab_size=18")  # TED-LIUM transcripts add the apostrophe
    sweep = pd.read_csv(tmp_path / "teacher" / "depth_sweep_test.csv")
    assert sweep["depth"].tolist() == [1, 2, 3, 4]
    train = pd.read_csv(tmp_path / "prepared" / "train.csv")
    assert {"start", "stop"} <= set(train.columns)
