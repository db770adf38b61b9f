"""FSDD connected-digit preparation on the real recordings: split, audio, determinism, idempotency, errors."""

import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import torchaudio

from dld_brain.data import fsdd
from dld_brain.data.fsdd import DIGIT_WORDS, digits_to_words, locate_fsdd, prepare_fsdd
from dld_brain.data.manifest import DataPrepError

HELDOUT = {"jackson", "lucas"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fsdd_dir):
    out = tmp_path_factory.mktemp("fsdd_prep")
    return out, prepare_fsdd(fsdd_dir, out, download=False, takes_per_digit=4)


def read(csvs):
    return {split: pd.read_csv(path) for split, path in csvs.items()}


def test_manifests_schema_and_speaker_disjoint_split(prepared):
    _, csvs = prepared
    tables = read(csvs)
    for table in tables.values():
        assert list(table.columns) == ["ID", "duration", "wav", "spk_id", "wrd"] and len(table) > 0
    assert set(tables["train"]["spk_id"]).isdisjoint(HELDOUT)
    assert set(tables["valid"]["spk_id"]) == HELDOUT == set(tables["test"]["spk_id"])
    # 4 speakers x 10 digits x 4 takes x 2 copies = 320 clips; held out: 2 x 10 x 2 = 40 clips per split
    n_words = {s: t["wrd"].str.split().str.len().sum() for s, t in tables.items()}
    assert n_words == {"train": 320, "valid": 40, "test": 40}


def test_every_utterance_is_3_to_7_digits_of_real_audio(prepared):
    _, csvs = prepared
    for table in read(csvs).values():
        for row in table.itertuples():
            words = row.wrd.split()
            assert 3 <= len(words) <= 7 and set(words) <= set(DIGIT_WORDS)
            info = soundfile.info(row.wav)
            assert info.samplerate == 16000 and info.channels == 1
            assert abs(info.frames / 16000 - row.duration) < 1e-3


def test_utterance_audio_contains_the_resampled_clips(prepared, fsdd_dir):
    _, csvs = prepared
    row = pd.read_csv(csvs["test"]).iloc[0]
    audio, _ = soundfile.read(row.wav, dtype="float32")
    # the first clip is one of the two test takes (25, 26) of the first digit, resampled to 16 kHz
    first_digit = DIGIT_WORDS.index(row.wrd.split()[0])
    best = 1.0
    for take in range(25, 27):
        path = fsdd_dir / "recordings" / f"{first_digit}_{row.spk_id}_{take}.wav"
        clip, rate = soundfile.read(str(path), dtype="float32")
        ref = torchaudio.functional.resample(torch.from_numpy(clip), rate, 16000).numpy()
        err = np.abs(audio[: len(ref)] - ref).max()
        best = min(best, err)
    assert best < 1e-3  # 16-bit quantisation only


def test_same_seed_same_bytes_other_seed_differs(prepared, tmp_path, fsdd_dir):
    out, csvs = prepared
    again = prepare_fsdd(fsdd_dir, tmp_path / "again", download=False, takes_per_digit=4)
    other = prepare_fsdd(fsdd_dir, tmp_path / "other", download=False, takes_per_digit=4, seed=7)
    for split in csvs:
        a, b = pd.read_csv(csvs[split]), pd.read_csv(again[split])
        assert a.drop(columns="wav").equals(b.drop(columns="wav"))
        for wa, wb in zip(a["wav"], b["wav"]):
            assert open(wa, "rb").read() == open(wb, "rb").read()
    assert not pd.read_csv(csvs["train"])["wrd"].equals(pd.read_csv(other["train"])["wrd"])


def test_rerun_is_skipped_and_changed_options_reprepare(tmp_path, fsdd_dir):
    csvs = prepare_fsdd(fsdd_dir, tmp_path, download=False, takes_per_digit=2)
    stamp = csvs["train"].stat().st_mtime_ns
    prepare_fsdd(fsdd_dir, tmp_path, download=False, takes_per_digit=2)
    assert csvs["train"].stat().st_mtime_ns == stamp
    prepare_fsdd(fsdd_dir, tmp_path, download=False, takes_per_digit=2, train_copies=1)
    assert csvs["train"].stat().st_mtime_ns != stamp
    assert pd.read_csv(csvs["train"])["wrd"].str.split().str.len().sum() == 80


def test_locate_prefers_data_folder_then_fallbacks(tmp_path, fsdd_dir):
    assert locate_fsdd(tmp_path / "none", [fsdd_dir], download=False) == fsdd_dir / "recordings"
    with pytest.raises(DataPrepError, match="download disabled") as err:
        locate_fsdd(tmp_path / "none", [tmp_path / "also_none"], download=False)
    assert str(tmp_path / "none") in str(err.value) and str(tmp_path / "also_none") in str(err.value)


def test_offline_download_failure_is_clear(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(fsdd.urllib.request, "urlretrieve", offline)
    with pytest.raises(DataPrepError, match="download .* failed .*Network is unreachable"):
        locate_fsdd(tmp_path / "fsdd", download=True)
    assert not (tmp_path / "fsdd" / "recordings").exists()  # nothing half-downloaded left behind


def test_corrupt_clip_is_named(tmp_path, fsdd_dir):
    rec = tmp_path / "copy" / "recordings"
    rec.mkdir(parents=True)
    for path in (fsdd_dir / "recordings").glob("*_*_[01].wav"):
        shutil.copy(path, rec)
    (rec / "5_george_1.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(DataPrepError, match="5_george_1.wav"):
        prepare_fsdd(tmp_path / "copy", tmp_path / "out", download=False, takes_per_digit=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_speakers=("theo", "lucas")), "both in training and held out"),
    (dict(heldout_speakers=("bob",)), "unknown FSDD speakers"),
    (dict(min_digits=5, max_digits=3), "min_digits"),
])
def test_bad_options(tmp_path, fsdd_dir, kwargs, message):
    with pytest.raises(DataPrepError, match=message):
        prepare_fsdd(fsdd_dir, tmp_path, download=False, **kwargs)


def test_digits_to_words():
    assert digits_to_words([3, 1, 4]) == "THREE ONE FOUR"
