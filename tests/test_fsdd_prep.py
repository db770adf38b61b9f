"""FSDD connected-digit preparation on the real recordings: split, audio, determinism, idempotency, errors."""

import csv
import hashlib
import math
import os
import shutil
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from dld_brain.data import fsdd
from dld_brain.data.fsdd import DIGIT_WORDS, digits_to_words, locate_fsdd, prepare_fsdd
from dld_brain.data.manifest import MANIFEST_FIELDS, DataPrepError

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"
TRAIN = {"nicolas", "theo", "yweweler", "george"}
HELDOUT = {"jackson", "lucas"}
SR = 16000


@pytest.fixture(scope="module")
def fsdd_root():
    """The shared FSDD copy; skip only when it is absent."""
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"real FSDD audio not found at {FSDD}")
    return FSDD


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fsdd_root):
    """A takes_per_digit=4 prep shared by the read-only tests."""
    out = tmp_path_factory.mktemp("fsdd_prep")
    return out, prepare_fsdd(fsdd_root, out, download=False, takes_per_digit=4)


def rows(path):
    """A manifest as a list of dicts (strings, as written)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def resampled(path):
    """A source clip resampled 8 kHz -> 16 kHz, as the prep does."""
    clip, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 8000
    return torchaudio.functional.resample(torch.from_numpy(clip), rate, SR).numpy()


def matching_take(segment, root, digit, speaker, takes):
    """The take of ``digit`` by ``speaker`` whose resampled audio equals ``segment`` (up to 16-bit rounding)."""
    found = []
    for take in takes:
        ref = resampled(root / "recordings" / f"{digit}_{speaker}_{take}.wav")
        if len(ref) <= len(segment) and np.abs(segment[: len(ref)] - ref).max() < 1e-4:
            found.append(take)
    assert len(found) == 1, f"{digit}_{speaker}: matches {found}"
    return found[0]


# ----------------------------------------------------------------------------------------- manifests
def test_three_manifests_with_the_schema(prepared):
    out, csvs = prepared
    assert set(csvs) == {"train", "valid", "test"}
    for split, path in csvs.items():
        assert path == out / f"{split}.csv"
        header = path.read_text(encoding="utf-8").splitlines()[0]
        assert header == ",".join(MANIFEST_FIELDS) == "ID,duration,wav,spk_id,wrd"
        assert len(rows(path)) > 0


def test_split_is_speaker_disjoint_and_each_clip_used_as_specified(prepared):
    _, csvs = prepared
    table = {split: rows(path) for split, path in csvs.items()}
    assert {r["spk_id"] for r in table["train"]} == TRAIN
    assert {r["spk_id"] for r in table["valid"]} == HELDOUT == {r["spk_id"] for r in table["test"]}
    for split, expected in (("train", 4 * 2), ("valid", 2), ("test", 2)):
        # every digit of every speaker: train 4 takes x 2 copies, held out ceil(4/2) takes once
        counts = Counter((r["spk_id"], w) for r in table[split] for w in r["wrd"].split())
        speakers = TRAIN if split == "train" else HELDOUT
        assert counts == {(s, w): expected for s in speakers for w in DIGIT_WORDS}
    for split, split_rows in table.items():
        for r in split_rows:
            assert r["ID"].startswith(f"fsdd_{split}_{r['spk_id']}_")


def test_every_utterance_has_3_to_7_digits_and_a_matching_16k_mono_wav(prepared):
    _, csvs = prepared
    for path in csvs.values():
        for r in rows(path):
            words = r["wrd"].split()
            assert 3 <= len(words) <= 7 and set(words) <= set(DIGIT_WORDS)
            assert r["wrd"] == r["wrd"].upper()
            assert Path(r["wav"]).is_file()
            info = soundfile.info(r["wav"])
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert abs(info.frames / SR - float(r["duration"])) <= 0.0005 + 1e-9


def test_valid_and_test_use_disjoint_takes_of_their_ranges(prepared, fsdd_root):
    _, csvs = prepared
    used = {}
    for split, takes in (("valid", range(0, 25)), ("test", range(25, 50))):
        used[split] = set()
        for r in rows(csvs[split]):
            audio, _ = soundfile.read(r["wav"], dtype="float32")
            first = DIGIT_WORDS.index(r["wrd"].split()[0])
            take = matching_take(audio, fsdd_root, first, r["spk_id"], range(50))
            assert take in takes[:2]  # takes_per_digit=4 -> first ceil(4/2) takes of the range
            used[split].add((r["spk_id"], first, take))
    assert used["valid"] and used["test"] and used["valid"].isdisjoint(used["test"])


def test_wav_is_the_resampled_clips_joined_by_gaps(tmp_path, fsdd_root):
    # one take per digit, one copy: a train utterance's clips are known from its words
    threads = torch.get_num_threads()
    csvs = prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=1, train_copies=1)
    assert torch.get_num_threads() == threads  # the prep's one-thread resampling is undone
    r = rows(csvs["train"])[0]
    audio, rate = soundfile.read(r["wav"], dtype="float32")
    assert rate == SR
    digits = [DIGIT_WORDS.index(w) for w in r["wrd"].split()]
    clips = [resampled(fsdd_root / "recordings" / f"{d}_{r['spk_id']}_0.wav") for d in digits]
    speech = sum(len(c) for c in clips)
    gaps = len(clips) - 1
    assert speech + gaps * int(0.05 * SR) <= len(audio) <= speech + gaps * 0.25 * SR
    assert np.abs(audio[: len(clips[0])] - clips[0]).max() < 1e-4  # 16-bit rounding only
    assert np.abs(audio[-len(clips[-1]):] - clips[-1]).max() < 1e-4
    assert digits_to_words(digits) == r["wrd"]


# -------------------------------------------------------------------------- determinism, idempotency
def test_same_seed_gives_identical_bytes_and_another_seed_differs(prepared, tmp_path, fsdd_root):
    out, csvs = prepared
    again = prepare_fsdd(fsdd_root, tmp_path / "again", download=False, takes_per_digit=4)
    other = prepare_fsdd(fsdd_root, tmp_path / "other", download=False, takes_per_digit=4, seed=7)
    for split in csvs:
        text = csvs[split].read_text(encoding="utf-8")
        # the wav column holds absolute paths, which differ only by the save folder
        assert text.replace(str(out.resolve()), "<SAVE>") == \
            again[split].read_text(encoding="utf-8").replace(str((tmp_path / "again").resolve()), "<SAVE>")
        for ra, rb in zip(rows(csvs[split]), rows(again[split])):
            assert Path(ra["wav"]).read_bytes() == Path(rb["wav"]).read_bytes()
        assert sorted(p.name for p in (out / "wavs" / split).iterdir()) == \
            sorted(p.name for p in (tmp_path / "again" / "wavs" / split).iterdir())
    assert [r["wrd"] for r in rows(csvs["train"])] != [r["wrd"] for r in rows(other["train"])]
    first, first_other = rows(csvs["train"])[0]["wav"], rows(other["train"])[0]["wav"]
    assert Path(first).read_bytes() != Path(first_other).read_bytes()


def test_rerun_is_skipped_and_a_changed_option_reprepares(tmp_path, fsdd_root, caplog):
    csvs = prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=2)
    wav = Path(rows(csvs["test"])[0]["wav"])
    stamps = {p: p.stat().st_mtime_ns for p in [*csvs.values(), wav]}
    caplog.set_level("INFO", logger="dld_brain.data.fsdd")
    assert prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=2) == csvs
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "skipping preparation" in caplog.text
    prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=2, train_copies=1)
    assert csvs["train"].stat().st_mtime_ns != stamps[csvs["train"]]
    assert sum(len(r["wrd"].split()) for r in rows(csvs["train"])) == 4 * 10 * 2  # one copy of 2 takes
    listed = {Path(r["wav"]).name for r in rows(csvs["train"])}
    assert {p.name for p in (tmp_path / "wavs" / "train").iterdir()} == listed  # no stale wavs left


def test_prep_killed_half_way_is_redone(tmp_path, fsdd_root, monkeypatch):
    prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=1)
    calls = []

    def dies_on_second_manifest(path, manifest_rows, *args):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(path, manifest_rows, *args)

    real = fsdd.write_manifest
    monkeypatch.setattr(fsdd, "write_manifest", dies_on_second_manifest)
    with pytest.raises(KeyboardInterrupt):
        prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=1, seed=99)
    monkeypatch.setattr(fsdd, "write_manifest", real)
    # the old options' marker must not make the now-mixed folder pass as the old prep
    assert not (tmp_path / ".fsdd_prepared.json").exists()
    csvs = prepare_fsdd(fsdd_root, tmp_path, download=False, takes_per_digit=1)
    fresh = prepare_fsdd(fsdd_root, tmp_path / "fresh", download=False, takes_per_digit=1)
    assert [r["wrd"] for r in rows(csvs["train"])] == [r["wrd"] for r in rows(fresh["train"])]


# ------------------------------------------------------------------------------------------ locating
def test_locate_accepts_root_or_recordings_and_relative_fallbacks(tmp_path, fsdd_root, monkeypatch):
    assert locate_fsdd(fsdd_root, download=False) == fsdd_root
    assert locate_fsdd(fsdd_root / "recordings", download=False) == fsdd_root
    monkeypatch.chdir(fsdd_root.parent)
    assert locate_fsdd(tmp_path / "none", [tmp_path / "also_none", fsdd_root.name], download=False) == fsdd_root


def test_missing_folder_without_download_names_every_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataPrepError) as err:
        locate_fsdd(tmp_path / "none", ["rel_fallback"], download=False)
    message = str(err.value)
    assert str(tmp_path / "none") in message and str(tmp_path / "rel_fallback") in message
    assert "download disabled" in message and "--data_folder" in message and "recordings/" in message


def test_offline_download_failure_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(url, filename=None, *args, **kwargs):
        Path(filename).write_bytes(b"PK partial")  # a few bytes arrive, then the network dies
        raise OSError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(DataPrepError) as err:
        locate_fsdd(tmp_path / "fsdd", download=True)
    message = str(err.value)
    assert "Network is unreachable" in message and "download" in message and str(tmp_path / "fsdd") in message
    assert fsdd.FSDD_URL in message and "--data_folder" in message
    assert list((tmp_path / "fsdd").iterdir()) == []  # no recordings/, no temp folder left behind


def test_download_keeps_only_recordings(tmp_path, fsdd_root, monkeypatch):
    # a stand-in for the GitHub archive, built from real clips (no network here)
    archive = tmp_path / "release.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("free-spoken-digit-dataset-1.0.10/README.md", "readme")
        zf.writestr("free-spoken-digit-dataset-1.0.10/utils/x.py", "")
        for name in ("0_theo_0.wav", "1_theo_0.wav"):
            zf.write(fsdd_root / "recordings" / name, f"free-spoken-digit-dataset-1.0.10/recordings/{name}")
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, filename: shutil.copy(archive, filename))
    monkeypatch.setenv("DLD_FSDD_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())  # pinned by the user
    root = locate_fsdd(tmp_path / "data", download=True)
    assert root == tmp_path / "data"
    assert sorted(os.listdir(root)) == ["recordings"]
    assert sorted(os.listdir(root / "recordings")) == ["0_theo_0.wav", "1_theo_0.wav"]
    assert (root / "recordings" / "0_theo_0.wav").read_bytes() == \
        (fsdd_root / "recordings" / "0_theo_0.wav").read_bytes()


# ------------------------------------------------------------------------------------------ bad data
def partial_copy(fsdd_root, dest):
    """The clips a takes_per_digit=1 prep needs (takes 0 and 25 of every speaker)."""
    rec = dest / "recordings"
    rec.mkdir(parents=True)
    for path in (fsdd_root / "recordings").glob("*_*_*.wav"):
        if path.stem.split("_")[2] in ("0", "25"):
            shutil.copy(path, rec)
    return rec


def test_corrupt_clip_is_named(tmp_path, fsdd_root):
    rec = partial_copy(fsdd_root, tmp_path / "copy")
    assert len(list(rec.iterdir())) == 120
    prepare_fsdd(tmp_path / "copy", tmp_path / "ok", download=False, takes_per_digit=1)  # the copy suffices
    (rec / "5_george_0.wav").write_bytes(b"RIFF\x00\x00garbage, not a wav")
    with pytest.raises(DataPrepError, match="5_george_0.wav"):
        prepare_fsdd(tmp_path / "copy", tmp_path / "out", download=False, takes_per_digit=1)
    assert not (tmp_path / "out" / "train.csv").exists()


def test_empty_and_missing_clips_are_named(tmp_path, fsdd_root):
    rec = partial_copy(fsdd_root, tmp_path / "copy")
    soundfile.write(str(rec / "7_lucas_25.wav"), np.zeros(0, dtype=np.int16), 8000, subtype="PCM_16")
    with pytest.raises(DataPrepError, match=r"[Ee]mpty.*7_lucas_25\.wav"):
        prepare_fsdd(tmp_path / "copy", tmp_path / "out", download=False, takes_per_digit=1)
    (rec / "3_theo_0.wav").unlink()
    with pytest.raises(DataPrepError, match=r"missing.*3_theo_0\.wav"):
        prepare_fsdd(tmp_path / "copy", tmp_path / "out", download=False, takes_per_digit=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_speakers=("theo", "lucas")), r"\['lucas'\] are both in train_speakers and heldout_speakers"),
    (dict(heldout_speakers=("jackson", "bob")), r"unknown FSDD speakers \['bob'\]"),
    (dict(train_speakers=("theo", "theo")), "lists a speaker twice"),
    (dict(train_speakers=()), "at least one training"),
    (dict(min_digits=5, max_digits=3), "min_digits=5, max_digits=3"),
    (dict(min_digits=0), "1 <= min_digits"),
    (dict(train_copies=0), "train_copies"),
    (dict(gap_range_s=(0.3, 0.1)), "gap_range_s"),
    (dict(takes_per_digit=0), "takes_per_digit"),
    (dict(takes_per_digit=1, min_digits=3, max_digits=3), "cannot be cut into strings of 3..3 digits"),
])
def test_bad_options_are_rejected_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(DataPrepError, match=message):
        prepare_fsdd(tmp_path / "nowhere", tmp_path / "out", download=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_digit_words():
    assert DIGIT_WORDS == ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
    assert digits_to_words([3, 1, 4]) == "THREE ONE FOUR"
    assert digits_to_words([0, 9]) == "ZERO NINE"


def test_group_sizes_always_fit_the_range():
    rng = fsdd.random.Random(0)
    for n in range(1, 80):
        for lo, hi in ((1, 1), (2, 3), (3, 3), (3, 4), (3, 7), (5, 6)):
            if fsdd._can_split(n, lo, hi):
                sizes = fsdd._group_sizes(n, lo, hi, rng)
                assert sum(sizes) == n and all(lo <= s <= hi for s in sizes)
            else:
                assert n < lo or math.ceil(n / hi) * lo > n  # really impossible
