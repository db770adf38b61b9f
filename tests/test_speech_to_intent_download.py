"""Coffee-order corpus download for users without a local copy: a release archive laid out like GitHub's
(``speech-to-intent-benchmark-<commit>/data/speech/clean/*.wav`` + ``data/label/label.json``), built from
real orders and served from a file:// URL, becomes ``labels.csv`` + trimmed ``audio/*.flac`` that the
preparation reads."""

import csv
import hashlib
import json
import zipfile

import numpy as np
import pytest
import soundfile
from conftest import SHARED_DATA

from dld_brain.data.manifest import DataPrepError
from dld_brain.data.speech_to_intent import (S2I_COMMIT, locate_speech_to_intent, prepare_speech_to_intent,
                                             trim_span)

S2I_DIR = SHARED_DATA / "speech_to_intent"


def real_orders(n):
    with open(S2I_DIR / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))[:n]


def release_zip(tmp_path, orders, silence_s=1.0, unlabelled_missing="ffffffff-0000-0000-0000-000000000000"):
    """A GitHub-style archive of the release holding ``orders`` (padded with ``silence_s`` of silence each
    side, as the untrimmed originals are) and one label without audio."""
    top = f"speech-to-intent-benchmark-{S2I_COMMIT}"
    labels = {}
    path = tmp_path / "release.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for row in orders:
            sig, rate = soundfile.read(str(S2I_DIR / row["path"]), dtype="float32")
            pad = np.zeros(int(silence_s * rate), dtype="float32")
            wav = tmp_path / f"{row['id']}.wav"
            soundfile.write(str(wav), np.concatenate([pad, sig, pad]), rate, subtype="PCM_16")
            zf.write(wav, f"{top}/data/speech/clean/{row['id']}.wav")
            slots = {k: row[k] for k in ("coffeeDrink", "size", "roast") if row[k]}
            slots["milkAmount"] = " soy milk"  # the release has values with a leading space
            labels[f"{row['id']}.wav"] = {"intent": "orderDrink", "slots": slots}
        labels[f"{unlabelled_missing}.wav"] = {"intent": "orderDrink", "slots": {"coffeeDrink": "latte"}}
        zf.writestr(f"{top}/data/label/label.json", json.dumps(labels))
        zf.writestr(f"{top}/README.md", "not extracted")
    return path


def test_trim_span_keeps_speech_and_margin():
    rate = 16000
    sig = np.zeros(3 * rate, dtype="float32")
    sig[rate: 2 * rate] = 0.5 * np.sin(np.arange(rate) / 5.0)
    start, stop = trim_span(sig, rate, margin_s=0.3)
    assert abs(start - int(0.7 * rate)) <= 160 and abs(stop - int(2.3 * rate)) <= 160


def test_download_builds_the_local_layout_and_prep_reads_it(tmp_path):
    orders = real_orders(6)
    archive = release_zip(tmp_path, orders)
    target = tmp_path / "data" / "speech_to_intent"
    found = locate_speech_to_intent(target, [tmp_path / "nowhere"], download=True, url=archive.as_uri(),
                                    sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    assert found == target.absolute()
    with open(target / "labels.csv", newline="") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {o["id"] for o in orders}  # the label without audio is dropped
    for order in orders:
        row = rows[order["id"]]
        assert row["coffeeDrink"] == order["coffeeDrink"] and row["milkAmount"] == "soy milk"
        sig, rate = soundfile.read(str(target / row["path"]))
        original = float(order["duration"])
        # 1 s of silence was added each side; trimming keeps the speech plus at most the 0.3 s margins
        assert original - 0.05 <= len(sig) / rate <= original + 0.65
    assert not list(target.glob(".s2i_download_*"))  # the temp folder is gone
    csvs = prepare_speech_to_intent(target, tmp_path / "prep", valid_frac=0.2, test_frac=0.2)
    assert sum(len(open(p).read().splitlines()) - 1 for p in csvs.values()) == len(orders)


def test_failed_download_is_a_clear_error_and_leaves_no_partial_copy(tmp_path):
    target = tmp_path / "s2i"
    with pytest.raises(DataPrepError, match="download from .*missing.zip failed"):
        locate_speech_to_intent(target, download=True, url=(tmp_path / "missing.zip").as_uri())
    assert not (target / "labels.csv").exists() and not (target / "audio").exists()
    with pytest.raises(DataPrepError, match="allow the download"):
        locate_speech_to_intent(target, download=False)
