"""Fault injection on real training runs (FSDD audio, tiny model): SIGKILL mid-epoch and during a
checkpoint save, then rerun the same command: the resumed run must end with the same model as an
uninterrupted one, and a half-written checkpoint must never be loaded."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny

TRAIN = str(REPO / "recipes" / "FSDD" / "train.py")


def run(out, prep, fsdd_dir, fault=None, **changes):
    env = dict(os.environ)
    env.pop("DLD_FAULT", None)
    if fault:
        env["DLD_FAULT"] = fault
    args = [sys.executable, TRAIN, str(REPO / "hparams" / "fsdd" / "rdsc.yaml"), f"--experiment_root={out}",
            f"--prep_folder={prep}", f"--data_folder={fsdd_dir}",
            *tiny(**{**dict(number_of_epochs=2, batch_size=2, ckpt_interval_steps=3, sweep_depths="[4]",
                         nonfinite_patience=3), **changes})]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)


def final_model(out):
    save = out / "rdsc" / "save"
    ckpts = sorted(p for p in save.glob("CKPT+*") if (p / "COMPLETE").is_file())
    metas = {p: (p / "CKPT.yaml").read_text() for p in ckpts}
    last = [p for p, m in metas.items() if "epoch: 2" in m]
    assert last, f"no end-of-epoch-2 checkpoint in {save}: {list(metas)}"
    return torch.load(last[0] / "model.ckpt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fsdd_dir):
    root = tmp_path_factory.mktemp("robust")
    proc = run(root / "ref", root / "prep", fsdd_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, final_model(root / "ref")


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), f"{key} differs after resumption"


def test_sigkill_mid_epoch_then_rerun_gives_the_same_model(reference, fsdd_dir):
    root, ref = reference
    killed = run(root / "kill", root / "prep", fsdd_dir, fault="after_step:7")
    assert killed.returncode == -signal.SIGKILL
    assert any((p / "COMPLETE").is_file() for p in (root / "kill" / "rdsc" / "save").glob("CKPT+*"))
    resumed = run(root / "kill", root / "prep", fsdd_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Loading a checkpoint" in resumed.stdout + resumed.stderr
    assert_same(ref, final_model(root / "kill"))


def test_checkpoint_half_written_at_the_kill_is_never_loaded(reference, fsdd_dir):
    root, ref = reference
    killed = run(root / "save", root / "prep", fsdd_dir, fault="during_save:6")
    assert killed.returncode == -signal.SIGKILL
    save = root / "save" / "rdsc" / "save"
    incomplete = [p for p in save.glob("CKPT+*") if not (p / "COMPLETE").is_file()]
    assert incomplete, "the fault should have left a checkpoint without its COMPLETE marker"
    resumed = run(root / "save", root / "prep", fsdd_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert "Ignoring incomplete checkpoint" in log
    assert f"Loading a checkpoint from {incomplete[0]}" not in log
    assert_same(ref, final_model(root / "save"))


DYNAMIC = dict(dynamic_batching=True, dynamic_batch_sampler_train="{max_batch_length: 8, num_buckets: 3, "
               "shuffle: True, batch_ordering: random, max_batch_ex: 3}")


def test_reshuffle_resume_mid_epoch_with_dynamic_batches(reference, fsdd_dir, tmp_path):
    """Duration-bucketed batches, reshuffled each epoch: a run stopped after epoch 1, restarted, killed in
    epoch 2 and resumed from its intra-epoch checkpoint ends with the model of an uninterrupted run (the
    batches of an epoch depend only on the seed and the epoch, not on how the process got there)."""
    root, _ = reference
    ref = run(tmp_path / "ref", root / "prep", fsdd_dir, **DYNAMIC)
    assert ref.returncode == 0, ref.stderr[-2000:]
    first = run(tmp_path / "kill", root / "prep", fsdd_dir, number_of_epochs=1, **DYNAMIC)
    assert first.returncode == 0, first.stderr[-2000:]
    killed = run(tmp_path / "kill", root / "prep", fsdd_dir, fault="after_step:4", **DYNAMIC)
    assert killed.returncode == -signal.SIGKILL
    resumed = run(tmp_path / "kill", root / "prep", fsdd_dir, **DYNAMIC)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(final_model(tmp_path / "ref"), final_model(tmp_path / "kill"))


def test_nonfinite_loss_is_skipped_and_counted(reference, fsdd_dir, tmp_path):
    root, _ = reference
    proc = run(tmp_path / "nan", root / "prep", fsdd_dir, fault="nan_loss:3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Non-finite loss at epoch 1 step 3: step skipped (1 so far" in proc.stdout + proc.stderr
    log = (tmp_path / "nan" / "rdsc" / "train_log.txt").read_text()
    assert "nonfinite_steps: 1" in log
    model = final_model(tmp_path / "nan")
    assert all(torch.isfinite(v).all() for v in model.values())


def test_persistent_nonfinite_loss_stops_with_a_clear_message(reference, fsdd_dir, tmp_path):
    root, _ = reference
    proc = run(tmp_path / "nan", root / "prep", fsdd_dir, fault="nan_loss_from:2")
    assert proc.returncode == 2
    assert "error: the loss was non-finite in 4 steps (patience 3)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_same_seed_same_model_and_wer(reference, fsdd_dir, tmp_path):
    root, ref = reference
    proc = run(tmp_path / "again", root / "prep", fsdd_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same(ref, final_model(tmp_path / "again"))
    first = (root / "ref" / "rdsc" / "depth_sweep_test.csv").read_text().splitlines()
    second = (tmp_path / "again" / "rdsc" / "depth_sweep_test.csv").read_text().splitlines()
    wer = lambda lines: [line.split(",")[4] for line in lines]  # noqa: E731  (latency columns vary)
    assert wer(first) == wer(second)


def test_bad_rows_in_a_real_run_are_skipped_by_rule(reference, fsdd_dir, tmp_path):
    """Every kind of broken row is injected into the training manifest of a real run."""
    import numpy as np
    import pandas as pd
    import soundfile

    root, _ = reference
    train = pd.read_csv(root / "prep" / "train.csv")
    good = train.iloc[0]
    audio, rate = soundfile.read(good.wav, dtype="float32")
    bad = tmp_path / "bad"
    bad.mkdir()
    soundfile.write(bad / "full.wav", audio, rate, subtype="PCM_16")
    data = (bad / "full.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(data[: len(data) // 2])
    (bad / "zero.wav").write_bytes(data[:44])
    soundfile.write(bad / "silent.wav", np.zeros_like(audio), rate)
    soundfile.write(bad / "short.wav", audio[:800], rate)
    import torch
    import torchaudio

    stereo44 = torchaudio.functional.resample(torch.from_numpy(audio), rate, 44100).numpy()
    soundfile.write(bad / "stereo44k.wav", np.stack([stereo44, stereo44], 1), 44100)
    rows = [("missing", str(bad / "nope.wav"), good.wrd), ("truncated", str(bad / "truncated.wav"), good.wrd),
            ("zero", str(bad / "zero.wav"), good.wrd), ("silent", str(bad / "silent.wav"), good.wrd),
            ("short", str(bad / "short.wav"), good.wrd), ("empty_text", good.wav, ""),
            ("odd_chars", good.wav, "ONE ÜBER TWO"), ("stereo44k", str(bad / "stereo44k.wav"), good.wrd)]
    extra = pd.DataFrame([{"ID": i, "duration": 1.0, "wav": w, "spk_id": "x", "wrd": t} for i, w, t in rows])
    pd.concat([train, extra]).to_csv(tmp_path / "train_bad.csv", index=False)
    changes = dict(train_csv=tmp_path / "train_bad.csv", check_audio="full", number_of_epochs=1)
    proc = run(tmp_path / "exp", root / "prep", fsdd_dir, **changes)  # same prep folder: nothing re-prepared
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "exp" / "rdsc" / "skipped_train.txt").read_text()
    expected = {"missing": "audio file missing", "truncated": "truncated audio", "zero": "0 samples",
                "silent": "silent audio", "short": "too short", "empty_text": "empty transcript",
                "odd_chars": "units the tokenizer does not know"}
    for utt, reason in expected.items():
        assert any(line.startswith(utt + "\t") and reason in line for line in report.splitlines()), utt
    assert "stereo44k" not in report  # other rates and stereo are converted, not dropped
    assert f"Skipped {len(expected)} of {len(train) + len(rows)} rows" in proc.stdout + proc.stderr
    strict = run(tmp_path / "strict", root / "prep", fsdd_dir, on_bad_data="error", **changes)
    assert strict.returncode == 2 and "cannot be used" in strict.stderr and "nope.wav" in strict.stderr
