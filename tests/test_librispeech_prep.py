"""LibriSpeech preparation through prepare_librispeech on a corpus laid out like the real one (FLAC made
from real FSDD speech): manifests, durations, IDs, speakers, the merged training CSV, idempotency, and
every kind of bad input (missing split, transcript line without audio, audio without transcript, corrupt
FLAC, malformed transcript lines)."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from corpus_fixtures import make_librispeech_fixture

from dld_brain.data.librispeech import prepare_librispeech
from dld_brain.data.manifest import DataPrepError

TRAIN = ("train-clean-100", "train-clean-360")
SPLITS = dict(tr_splits=TRAIN, dev_splits=("dev-clean",), te_splits=("test-clean",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fsdd_dir):
    """(LibriSpeech folder, {utt: what was written}) with 4 splits x 2 speakers x 1 chapter x 3 utterances."""
    truth = {}
    root = make_librispeech_fixture(tmp_path_factory.mktemp("ls"), fsdd_dir,
                                    splits=(*TRAIN, "dev-clean", "test-clean"), truth=truth)
    return root, truth


@pytest.fixture
def copy(corpus, tmp_path):
    """A private copy of the corpus for a test to break, and one of its dev-clean chapter folders."""
    target = tmp_path / "LibriSpeech"
    shutil.copytree(corpus[0], target)
    return target, sorted((target / "dev-clean").glob("*/*"))[0]


def test_manifests_match_what_was_written(corpus, tmp_path):
    root, truth = corpus
    out = prepare_librispeech(root, tmp_path, **SPLITS)
    assert set(out) == {*TRAIN, "dev-clean", "test-clean", "train"}
    for split in (*TRAIN, "dev-clean", "test-clean"):
        table = pd.read_csv(out[split], dtype=str)
        assert list(table.columns) == ["ID", "duration", "wav", "spk_id", "wrd"]
        expected = sorted(u for u, t in truth.items() if t["split"] == split)
        assert table["ID"].tolist() == expected and len(expected) == 6
        for row in table.itertuples():
            t = truth[row.ID]
            assert row.wav == f"$data_root/{split}/{t['spk']}/{t['chapter']}/{row.ID}.flac"  # movable
            assert row.spk_id == t["spk"] and row.ID.startswith(f"{t['spk']}-{t['chapter']}-")
            assert len(row.ID.split("-")[2]) == 4 and row.wrd == t["words"]
            assert float(row.duration) == pytest.approx(len(t["audio"]) / 16000, abs=5e-4)
            audio, rate = soundfile.read(row.wav.replace("$data_root", str(root)), dtype="int16")
            assert rate == 16000 and np.array_equal(audio, t["audio"])
    # speakers are per split, as in LibriSpeech
    speakers = {s: set(pd.read_csv(out[s], dtype=str)["spk_id"]) for s in (*TRAIN, "dev-clean", "test-clean")}
    assert all(len(v) == 2 for v in speakers.values())
    assert len(set.union(*speakers.values())) == 8
    # train.csv is the training splits concatenated, nothing else
    merged = pd.read_csv(out["train"], dtype=str)
    parts = pd.concat([pd.read_csv(out[s], dtype=str) for s in TRAIN], ignore_index=True)
    pd.testing.assert_frame_equal(merged, parts)


def test_parent_folder_idempotency_and_limit(corpus, tmp_path, caplog):
    root, _ = corpus
    out = prepare_librispeech(root.parent, tmp_path, **SPLITS)  # the folder holding LibriSpeech/ works too
    stamps = {k: p.stat().st_mtime_ns for k, p in out.items()}
    with caplog.at_level(logging.INFO, logger="dld_brain.data.librispeech"):
        again = prepare_librispeech(root.parent, tmp_path, **SPLITS)
    assert again == out and {k: p.stat().st_mtime_ns for k, p in out.items()} == stamps
    assert "up to date; skipping preparation" in caplog.text
    # other options redo the work: select_n_sentences keeps the first N of every split
    out = prepare_librispeech(root.parent, tmp_path, select_n_sentences=2, **SPLITS)
    assert [len(pd.read_csv(out[s])) for s in ("train-clean-100", "dev-clean", "train")] == [2, 2, 4]
    # a deleted manifest is rebuilt even with the same options
    out["dev-clean"].unlink()
    prepare_librispeech(root.parent, tmp_path, select_n_sentences=2, **SPLITS)
    assert len(pd.read_csv(out["dev-clean"])) == 2


def test_missing_split_folder_is_named(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(DataPrepError, match=r"split folder missing: .*test-other \(found \['dev-clean', "
                                            r"'test-clean', 'train-clean-100', 'train-clean-360'\]\)"):
        prepare_librispeech(root, tmp_path, tr_splits=TRAIN, dev_splits=(), te_splits=("test-other",))
    assert not (tmp_path / "train-clean-100.csv").exists()  # checked before any manifest is written
    with pytest.raises(DataPrepError, match="LibriSpeech folder not found"):
        prepare_librispeech(tmp_path / "nowhere", tmp_path, **SPLITS)


def test_transcript_line_without_audio(copy, tmp_path, caplog):
    root, chapter = copy
    victim = sorted(chapter.glob("*.flac"))[0]
    victim.unlink()
    trans = next(chapter.glob("*.trans.txt")).relative_to(root / "dev-clean")
    with pytest.raises(DataPrepError, match=rf"1 transcript lines without audio: {trans}:1 {victim.stem} "
                                            rf"has no {victim.name}.*on_missing='skip'"):
        prepare_librispeech(root, tmp_path / "out", **SPLITS)
    assert not (tmp_path / "out" / "dev-clean.csv").exists()
    with caplog.at_level(logging.WARNING):
        out = prepare_librispeech(root, tmp_path / "out", on_missing="skip", **SPLITS)
    assert "skipped 1 unusable utterances" in caplog.text and victim.stem in caplog.text
    ids = pd.read_csv(out["dev-clean"])["ID"].tolist()
    assert victim.stem not in ids and len(ids) == 5


def test_audio_without_transcript(copy, tmp_path, caplog):
    root, chapter = copy
    spk, chap = chapter.parent.name, chapter.name
    extras = [chapter / f"{spk}-{chap}-{n:04d}.flac" for n in range(90, 102)]
    for extra in extras:
        shutil.copy(sorted(chapter.glob("*.flac"))[0], extra)
    with pytest.raises(DataPrepError) as err:
        prepare_librispeech(root, tmp_path / "out", **SPLITS)
    message = str(err.value)
    assert "12 flac files without transcript" in message
    assert f"{extras[0].relative_to(root / 'dev-clean')} has no transcript line" in message
    assert message.count("has no transcript line") == 10 and " ..." in message  # 10 listed, then "..."
    with caplog.at_level(logging.WARNING):
        out = prepare_librispeech(root, tmp_path / "out", on_missing="skip", **SPLITS)
    assert "skipped 12 unusable utterances" in caplog.text
    assert len(pd.read_csv(out["dev-clean"])) == 6


@pytest.mark.parametrize("content", [b"fLaC\x00\x00\x00\x22 but the rest is gone", b"", b"RIFF....WAVE", None])
def test_corrupt_flac(copy, tmp_path, caplog, content):
    root, chapter = copy
    victim = sorted(chapter.glob("*.flac"))[1]
    if content is None:  # a valid FLAC holding no samples
        soundfile.write(str(victim), np.zeros(0, dtype=np.int16), 16000, format="FLAC", subtype="PCM_16")
    else:
        victim.write_bytes(content)
    name = victim.relative_to(root / "dev-clean")
    with pytest.raises(DataPrepError, match=rf"dev-clean: 1 unreadable flac files: {name} is unreadable \(.+\)\. "):
        prepare_librispeech(root, tmp_path / "out", **SPLITS)
    with caplog.at_level(logging.WARNING):
        out = prepare_librispeech(root, tmp_path / "out", on_missing="skip", **SPLITS)
    assert "skipped 1 unusable utterances" in caplog.text and victim.name in caplog.text
    assert victim.stem not in pd.read_csv(out["dev-clean"])["ID"].tolist()


@pytest.mark.parametrize("bad_line, problem", [
    ("{prefix}0099", r"malformed line '{prefix}0099'"),
    ("{prefix}0001 SECOND COPY", r"utterance {prefix}0001 already given on line 2"),
    ("19-198-0001 ONE TWO", r"utterance 19-198-0001 does not belong to chapter folder"),
    ("{prefix}12a ONE", r"malformed line"),
])
def test_malformed_transcript_line(copy, tmp_path, bad_line, problem):
    root, chapter = copy
    trans = next(chapter.glob("*.trans.txt"))
    prefix = f"{chapter.parent.name}-{chapter.name}-"
    trans.write_text(trans.read_text() + bad_line.format(prefix=prefix) + "\n")
    with pytest.raises(DataPrepError, match=rf"{trans.name}:4: " + problem.format(prefix=prefix)):
        prepare_librispeech(root, tmp_path / "out", on_missing="skip", **SPLITS)  # never skipped


def test_bad_options(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(DataPrepError, match="on_missing must be one of"):
        prepare_librispeech(root, tmp_path, on_missing="ignore", **SPLITS)
    with pytest.raises(DataPrepError, match="also a split name"):
        prepare_librispeech(root, tmp_path, merge_train_name="dev-clean", **SPLITS)


def test_headers_read_in_parallel_give_the_same_manifest(copy, tmp_path):
    """Worker processes (SpeechBrain's parallel_map) read the headers; the manifest, including what is
    unreadable, is the one the calling process reads alone."""
    from dld_brain.data.librispeech import flac_header, read_headers

    root, chapter = copy
    broken = sorted(chapter.glob("*.flac"))[0]
    broken.write_bytes(b"not a flac")
    flacs = sorted(root.glob("*/*/*/*.flac"))
    alone = [flac_header(f) for f in flacs]
    assert read_headers(flacs, process_count=2) == alone
    assert [f for f, (_, reason) in zip(flacs, alone) if reason] == [broken]
    assert all(duration > 0 for duration, reason in alone if not reason)


def test_audio_checks_run_once_and_are_reused_while_the_manifest_is_unchanged(corpus, tmp_path, monkeypatch):
    """The launch's audio checks are cached beside the manifest: a second launch (another method, another
    rank, an evaluation) reads no audio; a changed manifest or check level is checked again."""
    from dld_brain import validation
    from dld_brain.data.manifest import read_manifest

    root, _ = corpus
    csv = prepare_librispeech(root, tmp_path, **SPLITS)["train"]
    with open(csv, "a") as handle:  # the manifest now holds a row whose audio is missing
        handle.write(f"extra-0-0,1.0,{tmp_path / 'gone.flac'},1,ONE\n")
    rows = read_manifest(csv, replacements={"data_root": root})
    checked = []
    real = validation.audio_problem
    monkeypatch.setattr(validation, "audio_problem", lambda wav, *a: checked.append(wav) or real(wav, *a))
    first = validation.cached_audio_problems(csv, rows, level="header")
    assert len(checked) == len(rows) and first == {"extra-0-0": "audio file missing"}
    assert validation.audio_check_sidecar(csv).is_file()
    checked.clear()
    assert validation.cached_audio_problems(csv, rows, level="header") == first and checked == []
    validation.cached_audio_problems(csv, rows, level="full")  # other options: checked again
    assert len(checked) == len(rows)
    checked.clear()
    with open(csv, "a") as handle:
        handle.write(f"extra-0-1,1.0,{rows[0]['wav']},1,TWO\n")
    again = validation.cached_audio_problems(csv, read_manifest(csv, replacements={"data_root": root}))
    assert len(checked) == len(rows) + 1 and again == first
    checked.clear()
    validation.cached_audio_problems(csv, rows, data_root="/moved/corpus")  # another corpus folder: again
    assert len(checked) == len(rows)


def test_manifest_paths_relative_to_data_root_so_a_prepared_corpus_can_move(corpus, tmp_path, caplog):
    """Prepared once, the corpus and its manifests move to another folder: preparation is not redone, and
    SpeechBrain's DynamicItemDataset.from_csv (and read_manifest) find every file under the new folder."""
    import speechbrain as sb

    from dld_brain.data.manifest import read_manifest

    first = tmp_path / "disk1"
    shutil.copytree(corpus[0], first / "LibriSpeech")
    out = prepare_librispeech(first, first / "prepared", **SPLITS)  # the parent of LibriSpeech/
    assert all(w.startswith("$data_root/LibriSpeech/") for w in pd.read_csv(out["train"])["wav"])
    moved = tmp_path / "disk2"
    shutil.move(first, moved)
    with caplog.at_level(logging.INFO, logger="dld_brain.data.librispeech"):
        again = prepare_librispeech(moved, moved / "prepared", **SPLITS)
    assert "up to date; skipping preparation" in caplog.text
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(again["test-clean"], replacements={"data_root": moved})
    wavs = [data.data[i]["wav"] for i in data.data_ids]
    assert len(wavs) == 6 and all(w.startswith(str(moved / "LibriSpeech" / "test-clean")) for w in wavs)
    assert all(Path(w).is_file() for w in wavs)
    assert [r["wav"] for r in read_manifest(again["test-clean"], replacements={"data_root": moved})] == wavs
    with pytest.raises(DataPrepError, match=r"test-clean.csv: row .* relative to \$data_root .* pass the corpus "
                                            r"folder \(data_folder\)"):
        read_manifest(again["test-clean"], replacements={})
