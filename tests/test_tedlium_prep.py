"""TED-LIUM 3 preparation through prepare_tedlium3 on a release laid out like the real one (NIST SPHERE
talks made from real FSDD speech, stm files in the real format): segment samples read through
SpeechBrain's read_audio equal the audio that was written, ignored and empty segments are dropped and
counted, idempotency, and the rules for overlaps, duplicates, segments past the audio end, malformed
stm lines and missing/corrupt audio."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from corpus_fixtures import make_tedlium3_fixture
from speechbrain.dataio.dataio import read_audio

from dld_brain.data.manifest import DataPrepError
from dld_brain.data.tedlium import parse_stm, prepare_tedlium3

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def release(tmp_path_factory, fsdd_dir):
    """(TEDLIUM_release-3 folder, {(talk, start, stop): what was written}), 2 talks per split."""
    truth = {}
    root = make_tedlium3_fixture(tmp_path_factory.mktemp("ted"), fsdd_dir, talks_per_split=2, truth=truth)
    return root, truth


@pytest.fixture
def copy(release, tmp_path):
    """A private copy of the release to break, and the first dev talk's stm file."""
    target = tmp_path / "TEDLIUM_release-3"
    shutil.copytree(release[0], target)
    return target, sorted((target / "legacy" / "dev" / "stm").glob("*.stm"))[0]


def append(stm, *lines):
    """Add lines to an stm file; return the line number of the first one."""
    old = stm.read_text().splitlines()
    stm.write_text("\n".join(old + list(lines)) + "\n")
    return len(old) + 1


def test_sph_files_are_nist_sphere_read_by_soundfile(release):
    root, truth = release
    sphs = sorted(root.glob("legacy/*/sph/*.sph"))
    assert len(sphs) == 6
    for sph in sphs:
        header = sph.read_bytes()[:1024]
        assert header.startswith(b"NIST_1A\n   1024\n") and b"sample_coding -s3 pcm" in header
        info = soundfile.info(str(sph))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("NIST", "PCM_16", 16000, 1)
        audio, _ = soundfile.read(str(sph), dtype="int16")
        for (talk, start, stop), seg in truth.items():
            if talk == sph.stem:
                assert np.array_equal(audio[start:stop], seg["audio"])


def test_segments_match_the_audio(release, tmp_path, caplog):
    root, truth = release
    with caplog.at_level(logging.INFO, logger="dld_brain.data.tedlium"):
        out = prepare_tedlium3(root, tmp_path)
    assert set(out) == set(SPLITS)
    for split in SPLITS:
        assert f"TED-LIUM 3 {split}: 10 segments" in caplog.text
        assert "dropped 8 ignore_time_segment_in_scoring, 2 empty and 0 duplicate segments" in caplog.text
        table = pd.read_csv(out[split], dtype={"spk_id": str})
        assert list(table.columns) == ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"]
        expected = sorted(k for k, v in truth.items() if v["split"] == split and v["kind"] == "speech")
        got = [(r.wav.rsplit("/", 1)[1][:-4], r.start, r.stop) for r in table.itertuples()]
        assert got == expected  # every speech segment, in talk and time order; ignored and empty ones dropped
        for row, key in zip(table.itertuples(), expected):
            talk, start, stop = key
            seg = truth[key]
            assert row.wav == f"$data_root/legacy/{split}/sph/{talk}.sph"  # relative: the release can move
            assert row.ID == f"{talk}-{start // 160:07d}-{stop // 160:07d}" and row.spk_id == talk
            assert row.duration == pytest.approx((stop - start) / 16000, abs=5e-4)
            assert row.wrd == seg["text"].replace(" <unk>", "").replace("it 's", "it's").upper()
            # exactly what the training code reads: the segment's samples, nothing more
            wav = row.wav.replace("$data_root", str(root))
            signal = read_audio({"file": wav, "start": int(row.start), "stop": int(row.stop)})
            assert signal.dtype.is_floating_point and signal.shape == (stop - start,)
            assert np.array_equal(np.round(signal.numpy() * 32768).astype(np.int16), seg["audio"])
    test = pd.read_csv(out["test"])
    assert "IT'S ONE TWO" in test["wrd"].tolist()
    assert not test["wrd"].str.contains("UNK|<|IGNORE| '", case=False).any()


def test_parent_folder_idempotency_and_limit(release, tmp_path, caplog):
    root, _ = release
    out = prepare_tedlium3(root.parent, tmp_path, splits=("dev", "test"))  # the folder holding the release
    stamps = {k: p.stat().st_mtime_ns for k, p in out.items()}
    with caplog.at_level(logging.INFO, logger="dld_brain.data.tedlium"):
        assert prepare_tedlium3(root.parent, tmp_path, splits=("dev", "test")) == out
    assert "up to date; skipping preparation" in caplog.text
    assert {k: p.stat().st_mtime_ns for k, p in out.items()} == stamps
    out = prepare_tedlium3(root, tmp_path, splits=("dev", "test"), max_segments=3)
    assert [len(pd.read_csv(p)) for p in out.values()] == [3, 3]


def test_overlapping_segments_kept_duplicates_dropped(copy, tmp_path, caplog):
    root, stm = copy
    first = next(parse_stm(stm))
    number = append(stm, f"{first.talk} 1 {first.talk} {first.start + 0.2:.2f} {first.end + 0.3:.2f} "
                         "<o,f0,male> five five",
                    f"{first.talk} {first.channel} {first.speaker} {first.start:.2f} {first.end:.2f} "
                    f"{first.label} {first.text}")
    with caplog.at_level(logging.INFO, logger="dld_brain.data.tedlium"):
        out = prepare_tedlium3(root, tmp_path, splits=("dev",))
    assert f"1 overlapping segments ({stm.name}:{number})" in caplog.text
    assert f"1 duplicate segments ({stm.name}:{number + 1})" in caplog.text
    table = pd.read_csv(out["dev"])
    assert len(table) == 11
    mine = table[table.wav.str.endswith(f"{first.talk}.sph")].reset_index()
    assert mine.loc[1, "wrd"] == "FIVE FIVE" and mine.loc[1, "start"] == round((first.start + 0.2) * 16000)
    assert mine.loc[1, "start"] < mine.loc[0, "stop"]  # the overlap is there, both utterances kept


def test_segment_past_audio_end(copy, tmp_path, caplog):
    root, stm = copy
    sph = root / "legacy" / "dev" / "sph" / f"{stm.stem}.sph"
    frames = soundfile.info(str(sph)).frames
    end = frames / 16000
    number = append(stm, f"{stm.stem} 1 {stm.stem} {end - 0.25:.2f} {end + 0.2:.2f} <o,f0,male> one")
    with caplog.at_level(logging.INFO, logger="dld_brain.data.tedlium"):
        out = prepare_tedlium3(root, tmp_path / "a", splits=("dev",))
    assert f"1 clipped segments ({stm.name}:{number})" in caplog.text
    last = pd.read_csv(out["dev"]).query("wrd == 'ONE'")
    assert last["stop"].tolist() == [frames] and last["start"].tolist() == [round((end - 0.25) * 16000)]


def test_stm_bad_line_is_skipped_and_counted(copy, tmp_path, caplog):
    """Lines whose times cannot be right (past the audio, starting after it, ending before they start) are
    skipped, counted and named; the rest of the talk and split is prepared."""
    root, stm = copy
    sph = root / "legacy" / "dev" / "sph" / f"{stm.stem}.sph"
    end = soundfile.info(str(sph)).frames / 16000
    before = len(pd.read_csv(prepare_tedlium3(root, tmp_path / "a", splits=("dev",))["dev"]))
    past = append(stm, f"{stm.stem} 1 {stm.stem} {end - 0.2:.2f} {end + 3:.2f} <o,f0,male> two",
                  f"{stm.stem} 1 {stm.stem} {end + 1:.2f} {end + 2:.2f} <o,f0,male> three",
                  f"{stm.stem} 1 {stm.stem} 2.00 1.00 <o,f0,male> four")
    with caplog.at_level(logging.INFO, logger="dld_brain.data.tedlium"):
        out = prepare_tedlium3(root, tmp_path / "b", splits=("dev",))
    table = pd.read_csv(out["dev"])
    assert len(table) == before and not table["wrd"].isin(["TWO", "THREE", "FOUR"]).any()
    assert "skipped 3 with impossible times" in caplog.text
    assert "3 skipped (impossible times) segments (" in caplog.text
    assert (f"{stm.name}:{past} ({end - 0.2:.2f}..{end + 3:.2f} s runs past the {end:.2f} s of {sph.name})"
            in caplog.text)
    assert f"{stm.name}:{past + 1} ({end + 1:.2f}..{end + 2:.2f} s runs past" in caplog.text
    assert f"{stm.name}:{past + 2} (2.00..1.00 s ends before it starts)" in caplog.text


@pytest.mark.parametrize("line, problem", [
    ("Talk_2010X 1 Talk_2010X", " 'Talk_2010X 1 Talk_2010X' \\(3 fields\\)"),
    ("Talk_2010X 1 Talk_2010X 1.0 x <o,f0,male> one", ", start/end are not numbers: '1.0' 'x'"),
    ("Talk_2010X 1 Talk_2010X 1.0 2.0 one two three", ", 6th field 'one' is not a label like <o,f0,male>"),
])
def test_malformed_stm_line(copy, tmp_path, line, problem):
    root, stm = copy
    number = append(stm, line)
    with pytest.raises(DataPrepError, match=rf"{stm.name}:{number}: malformed stm line" + problem):
        prepare_tedlium3(root, tmp_path, splits=("dev",))


def test_missing_corrupt_and_compressed_audio(copy, tmp_path):
    root, stm = copy
    sph = root / "legacy" / "dev" / "sph" / f"{stm.stem}.sph"
    good = sph.read_bytes()
    sph.write_bytes(good.replace(b"sample_coding -s3 pcm", b"sample_coding -s26 pcm,embedded-shorten-v2.00"))
    with pytest.raises(DataPrepError, match=rf"unreadable audio .*{sph.name}: .*shorten-compressed: convert it "
                                            "with 'sph2pipe -f sph'"):
        prepare_tedlium3(root, tmp_path, splits=("dev",))
    sph.write_bytes(good[:40])
    with pytest.raises(DataPrepError, match=rf"unreadable audio .*{sph.name}: .*re-extract it"):
        prepare_tedlium3(root, tmp_path, splits=("dev",))
    sph.unlink()
    with pytest.raises(DataPrepError, match=rf"audio for .*{stm.name} not found: .*{sph.name}"):
        prepare_tedlium3(root, tmp_path, splits=("dev",))


def test_missing_folders_are_named(copy, tmp_path):
    root, _ = copy
    shutil.rmtree(root / "legacy" / "test" / "stm")
    with pytest.raises(DataPrepError, match=r"folder missing: .*legacy/test/stm \(found \['dev/sph', "
                                            r"'dev/stm', 'test/sph', 'train/sph', 'train/stm'\]"):
        prepare_tedlium3(root, tmp_path, splits=("dev", "test"))
    assert not (tmp_path / "dev.csv").exists()  # checked before any manifest is written
    with pytest.raises(DataPrepError, match="TED-LIUM 3 folder not found: .*speaker-adaptation"):
        prepare_tedlium3(root, tmp_path, release_subdir="speaker-adaptation")


# ---- a LibriSpeech model scored on TED-LIUM 3: every reference counts ------------------------------------


def test_cross_corpus_every_tedlium_reference_is_scored(tmp_path, fsdd_dir):
    """A model whose tokenizer was trained on LibriSpeech-layout text (digit words: no apostrophe) is scored
    on a TED-LIUM-layout test set whose references hold ``IT'S`` and a digit: every reference is in the WER
    (the units it cannot output count as errors), a row with unreadable audio is scored as an empty
    hypothesis, and the counts are logged and in the sweep table."""
    import torch
    from conftest import REPO
    from corpus_fixtures import make_librispeech_fixture

    from dld_brain.brain import DynamicDepthCTCBrain
    from dld_brain.dataio import make_asr_datasets
    from dld_brain.recipe import build_tokenizer, fit, setup_experiment
    from dld_brain.sweep import depth_sweep

    libri = make_librispeech_fixture(tmp_path / "libri", fsdd_dir, splits=("train-clean-100", "dev-clean"),
                                     utts_per_chapter=4)
    ted = make_tedlium3_fixture(tmp_path / "ted", fsdd_dir, splits=("test",), talks_per_split=2)
    stm = sorted((ted / "legacy" / "test" / "stm").glob("*.stm"))[0]
    first = next(parse_stm(stm))  # the same speech, transcribed with a numeral
    append(stm, f"{first.talk} 1 {first.talk} {first.start:.2f} {first.end - 0.01:.2f} <o,f0,male> "
                f"{first.text.split()[0]} 2 {' '.join(first.text.split()[1:])}")
    import importlib.util

    # by path under its own name: another test may have imported recipes/FSDD/train.py as "train"
    spec = importlib.util.spec_from_file_location("librispeech_recipe_train",
                                                  REPO / "recipes" / "LibriSpeech" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    add_cross_domain, prepare = recipe.add_cross_domain, recipe.prepare

    args = [str(REPO / "hparams" / "teacher_conformer.yaml"), f"--data_folder={libri}",
            f"--experiment_root={tmp_path / 'exp'}", "--train_splits=[train-clean-100]", "--dev_splits=[dev-clean]",
            "--test_splits=[]", f"--tedlium_folder={ted}", "--num_layers=2", "--d_model=32",
            "--nhead=2", "--d_ffn=64", "--kernel_size=3", "--n_mels=40", "--token_type=char",
            "--vocab_size=17", "--device=cpu", "--number_of_epochs=1", "--dynamic_batching=False",
            "--train_dataloader_opts={batch_size: 4, num_workers: 0}", "--check_audio=header"]
    hparams, run_opts, _ = setup_experiment(args)
    prepare(hparams)
    hparams["test_csvs"] = {}  # only the cross-corpus set
    add_cross_domain(hparams)
    test_csv = hparams["test_csvs"]["tedlium3-test"]
    table = pd.read_csv(test_csv)
    lacking = table[table["wrd"].str.contains("'|2")]
    assert len(lacking) == 3  # two IT'S ONE TWO and the numeral line
    plain = table.drop(lacking.index).iloc[0].to_dict()
    table.loc[len(table)] = {**plain, "ID": "lost-0000000-0000100", "wav": str(tmp_path / "gone.sph")}
    table.to_csv(test_csv, index=False)
    hparams["tokenizer"] = build_tokenizer(hparams)
    datasets = make_asr_datasets(hparams, hparams["tokenizer"])
    assert len(datasets["tedlium3-test"]) == len(table) - 1  # all but the unreadable row are decoded
    log = (Path(hparams["output_folder"]) / "log.txt").read_text()  # the experiment log
    assert f"{len(table)} of {len(table)} references scored; 3 hold units the tokenizer cannot output" in log
    assert "1 with unreadable audio scored as empty hypotheses" in log

    brain = DynamicDepthCTCBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                                 run_opts=run_opts, checkpointer=hparams["checkpointer"])
    fit(brain, datasets, hparams)  # one epoch on 8 utterances: a checkpoint and feature statistics
    sweep = depth_sweep(brain, {"tedlium3-test": datasets["tedlium3-test"]}, hparams["output_folder"],
                        "teacher", depths=[2], latency_repeats=1,
                        loader_kwargs={"batch_size": 4, "generator": torch.Generator().manual_seed(0)})
    scores = brain.wer_metrics[None].scores
    assert sorted(s["key"] for s in scores) == sorted(table["ID"])  # every reference, exactly once
    assert sum(s["num_ref_tokens"] for s in scores) == table["wrd"].str.split().str.len().sum()
    lost = next(s for s in scores if s["key"] == "lost-0000000-0000100")
    assert lost["deletions"] == lost["num_ref_tokens"] > 0 and lost["hyp_tokens"] == []
    assert sweep[["refs_outside_tokenizer", "refs_unreadable"]].values.tolist() == [[3, 1]]
    saved = pd.read_csv(Path(hparams["output_folder"]) / "depth_sweep_tedlium3-test.csv")
    assert saved[["refs_outside_tokenizer", "refs_unreadable"]].values.tolist() == [[3, 1]]
    listed = (Path(hparams["output_folder"]) / "outside_tokenizer_tedlium3-test.txt").read_text()
    assert sorted(line.split("\t")[0] for line in listed.splitlines()[1:]) == sorted(lacking["ID"])
