"""LibriSpeech and TED-LIUM 3 preparation on fixtures laid out like the real corpora (real FSDD audio),
and the text normalisation on real-format lines."""

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile
from corpus_fixtures import make_librispeech_fixture, make_tedlium3_fixture
from speechbrain.dataio.dataio import read_audio

from dld_brain.data.librispeech import prepare_librispeech
from dld_brain.data.manifest import DataPrepError
from dld_brain.data.tedlium import parse_stm, prepare_tedlium3
from dld_brain.data.text import normalize_tedlium, normalize_transcript

SPLITS = dict(tr_splits=("train-clean-100",), dev_splits=("dev-clean",), te_splits=("test-clean",))


@pytest.fixture(scope="module")
def libri(tmp_path_factory, fsdd_dir):
    return make_librispeech_fixture(tmp_path_factory.mktemp("ls"), fsdd_dir)


@pytest.fixture(scope="module")
def ted(tmp_path_factory, fsdd_dir):
    return make_tedlium3_fixture(tmp_path_factory.mktemp("ted"), fsdd_dir)


def test_librispeech_manifests(libri, tmp_path):
    out = prepare_librispeech(libri, tmp_path, **SPLITS)
    assert set(out) == {"train-clean-100", "dev-clean", "test-clean", "train"}
    train = pd.read_csv(out["train"])
    assert list(train.columns) == ["ID", "duration", "wav", "spk_id", "wrd"] and len(train) == 6
    for row in train.itertuples():
        spk, chapter, utt = row.ID.split("-")
        assert row.spk_id == int(spk) and len(utt) == 4
        assert row.wav.endswith(f"train-clean-100/{spk}/{chapter}/{row.ID}.flac")
        info = soundfile.info(row.wav)
        assert info.format == "FLAC" and abs(info.frames / info.samplerate - row.duration) < 1e-3
        trans = (libri / "train-clean-100" / spk / chapter / f"{spk}-{chapter}.trans.txt").read_text()
        assert f"{row.ID} {row.wrd}\n" in trans
    # the parent of LibriSpeech/ works too, and a rerun is skipped
    stamp = out["train"].stat().st_mtime_ns
    prepare_librispeech(libri.parent, tmp_path, **SPLITS)
    assert out["train"].stat().st_mtime_ns == stamp


def test_librispeech_missing_split(libri, tmp_path):
    with pytest.raises(DataPrepError, match="split folder missing: .*test-other.*found"):
        prepare_librispeech(libri, tmp_path, te_splits=("test-other",), tr_splits=(), dev_splits=())


def broken_copy(libri, tmp_path):
    copy = tmp_path / "LibriSpeech"
    shutil.copytree(libri, copy)
    return copy, next((copy / "dev-clean").glob("*/*"))


def test_transcript_line_without_audio(libri, tmp_path, caplog):
    copy, chapter = broken_copy(libri, tmp_path)
    victim = sorted(chapter.glob("*.flac"))[0]
    victim.unlink()
    with pytest.raises(DataPrepError, match=f"1 transcript lines without audio.*{victim.stem}"):
        prepare_librispeech(copy, tmp_path / "out", **SPLITS)
    with caplog.at_level(logging.WARNING):
        out = prepare_librispeech(copy, tmp_path / "out", on_missing="skip", **SPLITS)
    assert "Skipping 1 utterances" in caplog.text
    assert victim.stem not in pd.read_csv(out["dev-clean"])["ID"].tolist()


def test_audio_without_transcript(libri, tmp_path):
    copy, chapter = broken_copy(libri, tmp_path)
    extra = chapter / f"{chapter.parent.name}-{chapter.name}-0099.flac"
    shutil.copy(sorted(chapter.glob("*.flac"))[0], extra)
    with pytest.raises(DataPrepError, match="flac files without transcript.*0099.flac: no transcript line"):
        prepare_librispeech(copy, tmp_path / "out", **SPLITS)


def test_corrupt_flac_and_malformed_transcript(libri, tmp_path):
    copy, chapter = broken_copy(libri, tmp_path)
    victim = sorted(chapter.glob("*.flac"))[1]
    victim.write_bytes(b"fLaC but not really")
    with pytest.raises(DataPrepError, match=f"Unreadable audio file .*{victim.name}"):
        prepare_librispeech(copy, tmp_path / "out", **SPLITS)
    trans = next(chapter.glob("*.trans.txt"))
    trans.write_text(trans.read_text() + "garbage-without-text\n")
    with pytest.raises(DataPrepError, match=f"{trans.name}:4: malformed line"):
        prepare_librispeech(copy, tmp_path / "out2", **SPLITS)


def test_tedlium_segments(ted, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        out = prepare_tedlium3(ted.parent / "TEDLIUM_release-3", tmp_path)
    assert "dropped 4 ignore_time_segment_in_scoring and 1 empty segments" in caplog.text
    test = pd.read_csv(out["test"])
    assert list(test.columns) == ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"]
    assert len(test) == 5 and "IT'S ONE TWO" in test["wrd"].tolist()
    assert not test["wrd"].str.contains("UNK|<|ignore", case=False).any()
    stm = next((ted / "legacy" / "test" / "stm").glob("*.stm"))
    first = next(parse_stm(stm))
    row = test.iloc[0]
    assert row.start == round(first.start * 16000) and row.stop == round(first.end * 16000)
    full, _ = soundfile.read(row.wav, dtype="float32")
    segment = read_audio({"file": row.wav, "start": int(row.start), "stop": int(row.stop)}).numpy()
    assert np.allclose(segment, full[row.start:row.stop], atol=1e-4)
    assert row.wav.endswith(".sph") and soundfile.info(row.wav).format == "NIST"


def test_tedlium_bad_inputs(ted, tmp_path):
    copy = tmp_path / "TEDLIUM_release-3"
    shutil.copytree(ted, copy)
    stm = next((copy / "legacy" / "dev" / "stm").glob("*.stm"))
    lines = stm.read_text().splitlines()
    stm.write_text("\n".join(lines + [lines[0].split(" ")[0] + " 1 spk 900.0 901.0 <o,f0,male> one"]) + "\n")
    with pytest.raises(DataPrepError, match=f"{stm.name}:{len(lines) + 1}: segment ends at 901.00 s"):
        prepare_tedlium3(copy, tmp_path / "a", splits=("dev",))
    stm.write_text("\n".join(lines + ["talk 1 spk"]) + "\n")
    with pytest.raises(DataPrepError, match=f"{stm.name}:{len(lines) + 1}: malformed stm line"):
        prepare_tedlium3(copy, tmp_path / "b", splits=("dev",))
    with pytest.raises(DataPrepError, match="TED-LIUM 3 folder not found"):
        prepare_tedlium3(tmp_path / "nowhere", tmp_path / "c")
    shutil.rmtree(copy / "legacy" / "test" / "stm")
    with pytest.raises(DataPrepError, match="split folder missing: .*test/stm"):
        prepare_tedlium3(copy, tmp_path / "d", splits=("test",))


@pytest.mark.parametrize("raw, expected", [
    ("i 'd like to share with you a discovery", "I'D LIKE TO SHARE WITH YOU A DISCOVERY"),
    ("it 's <unk> really {NOISE} don 't", "IT'S REALLY DON'T"),
    ("so the(2) people [laughter] said", "SO THE PEOPLE SAID"),
    ("<unk>", ""),
])
def test_normalize_tedlium(raw, expected):
    assert normalize_tedlium(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "HELLO WORLD"), ("  it's   'quoted'  ", "IT'S QUOTED"), ("", ""),
    ("MR. SMITH'S 2 DOGS", "MR SMITH'S 2 DOGS"),
])
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected
