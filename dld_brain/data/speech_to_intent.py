"""Spoken coffee orders (Picovoice Speech-to-Intent benchmark, Apache-2.0): drink classification manifests.

The local copy (see ``SOURCE.md`` next to it) holds ``labels.csv`` (``id, path, duration, ..., coffeeDrink,
...``) and 619 real crowd-sourced orders as ``audio/<id>.flac`` (16 kHz mono, silence-trimmed). The label is
the ordered drink, ``coffeeDrink`` (10 classes: americano, cappuccino, coffee, drip coffee, espresso, house
coffee, iced coffee, iced mocha, latte, mocha).

The corpus has no speaker ids (file names are UUIDs), so no speaker-disjoint split exists: the split is a
seeded random one, stratified by drink (each drink keeps its share in every split), and speakers leak
across splits. ``wrd`` holds the Whisper tiny.en MACHINE transcript when
``whisper_tiny_en_transcripts.tsv`` is present (not human-verified; never used as a training target),
else it is empty. Manifests: ``train/valid/test.csv`` with ``ID, duration, wav, spk_id, wrd, intent``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import soundfile

from dld_brain.data.fsc import SLU_FIELDS, SPLITS
from dld_brain.data.manifest import DataPrepError, PrepMarker, audio_info, downloaded_archive, write_manifest
from dld_brain.safe_files import sha256_of, verify_tree

logger = logging.getLogger(__name__)

LABEL_COLUMN = "coffeeDrink"
TRANSCRIPTS = "whisper_tiny_en_transcripts.tsv"
UNKNOWN_SPEAKER = "unknown"
PREP_VERSION = 1
#: The public release (Apache-2.0) at the commit our local copy was made from.
S2I_COMMIT = "47b1ca63afe4f08cb83e1f70fec16764879bd130"
S2I_URL = f"https://github.com/Picovoice/speech-to-intent-benchmark/archive/{S2I_COMMIT}.zip"
#: What the download must build: the content digest (:func:`dld_brain.safe_files.tree_digest`, audio digested by
#: :func:`audio_digest`) of ``audio/*.flac`` + ``labels.csv`` built from the archive at S2I_URL, with its file
#: count. Not pinned: our copy (../shared/data/speech_to_intent) was trimmed by a rule that
#: :func:`build_from_release` does not reproduce sample for sample (its trim starts are not on this code's 10 ms
#: grid and its durations are written as ``str(round(x, 3))``), so its digest (3e4e2dbe...f382 over 620 files)
#: would refuse a correct download, and the real archive could not be fetched here (no GitHub access) to pin
#: what this code builds. Until one is pinned, the download needs the archive sha256 (S2I_SHA256 or
#: ``$DLD_S2I_SHA256``) and is otherwise refused with the sha256 that arrived.
S2I_CONTENT_SHA256: Optional[str] = None
S2I_CONTENT_FILES: Optional[int] = None
S2I_CONTENT_MEMBERS = ("audio", "labels.csv")
#: Optional sha256 of the archive itself (also ``$DLD_S2I_SHA256``); when given it is checked before
#: unpacking and replaces the content check (to use another release on purpose).
S2I_SHA256: Optional[str] = None
SLOT_COLUMNS = ("coffeeDrink", "size", "roast", "numberOfShots", "milkAmount", "sugarAmount")


def audio_digest(path: Path) -> str:
    """sha256 of a file, over the decoded 16-bit samples (with rate, channels, frames) for FLAC: the pinned
    content is the audio, not the encoder's metadata or compression, which depend on the libsndfile version."""
    if path.suffix != ".flac":
        return sha256_of(path)
    sig, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    digest = hashlib.sha256(f"{rate} {sig.shape[1]} {sig.shape[0]}\n".encode())
    digest.update(np.ascontiguousarray(sig, dtype="<i2").tobytes())
    return digest.hexdigest()


def trim_span(sig: np.ndarray, sample_rate: int, threshold_db: float = -30.0, margin_s: float = 0.3,
              frame_s: float = 0.01) -> tuple[int, int]:
    """(start, stop) samples keeping the speech: frames whose RMS is within ``threshold_db`` of the loudest
    frame, widened by ``margin_s`` each side (the rule our local copy was trimmed with; see SOURCE.md)."""
    frame = max(1, int(frame_s * sample_rate))
    n = len(sig) // frame
    if n == 0:
        return 0, len(sig)
    rms = np.sqrt(np.mean(sig[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)) + 1e-12
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) >= threshold_db)
    margin = int(margin_s * sample_rate)
    return max(0, loud[0] * frame - margin), min(len(sig), (loud[-1] + 1) * frame + margin)


def build_from_release(release: Path, target: Path) -> int:
    """Turn an extracted release (``data/speech/clean/*.wav`` + ``data/label/label.json``) into our layout:
    ``target/audio/<id>.flac`` (silence-trimmed, see :func:`trim_span`) and ``target/labels.csv``.
    Labels whose audio is missing are dropped with a warning. Returns the number of orders written."""
    labels = json.loads((release / "data" / "label" / "label.json").read_text())
    (target / "audio").mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    for name, label in sorted(labels.items()):
        wav = release / "data" / "speech" / "clean" / name
        if not wav.is_file():
            missing.append(name)
            continue
        utt = Path(name).stem
        sig, rate = soundfile.read(str(wav), dtype="int16")  # 16-bit PCM, kept exactly (no float round trip)
        if sig.ndim > 1:
            sig = np.round(sig.mean(axis=1)).astype(np.int16)
        start, stop = trim_span(sig.astype(np.float32) / 32768.0, rate)
        soundfile.write(str(target / "audio" / f"{utt}.flac"), sig[start:stop], rate, format="FLAC")
        slots = {k: str(v).strip() for k, v in (label.get("slots") or {}).items()}
        rows.append({"id": utt, "path": f"audio/{utt}.flac", "duration": f"{(stop - start) / rate:.3f}",
                     "trim_start_s": f"{start / rate:.3f}", "trim_end_s": f"{stop / rate:.3f}",
                     "intent": label.get("intent", ""), **{c: slots.get(c, "") for c in SLOT_COLUMNS}})
    if missing:
        logger.warning("%d labelled orders have no audio in the release and were dropped: %s", len(missing),
                       missing[:10])
    if not rows:
        raise DataPrepError(f"{release} holds no labelled audio under data/speech/clean")
    fields = ["id", "path", "duration", "trim_start_s", "trim_end_s", "intent", *SLOT_COLUMNS]
    with open(target / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def download_speech_to_intent(data_folder: str | os.PathLike, url: str = S2I_URL,
                              sha256: Optional[str] = None) -> Path:
    """Download the Picovoice release archive and build ``data_folder/{labels.csv,audio/}`` from it.

    Verified before anything is put in place: with an archive sha256 (``sha256``, else ``$DLD_S2I_SHA256``,
    else S2I_SHA256) the archive is checked before it is unpacked; otherwise what is built from it in a hidden
    temp folder must have the pinned content digest S2I_CONTENT_SHA256 (with neither pinned the download is
    refused, naming the sha256 that arrived). A mismatch is one line
    (:class:`dld_brain.safe_files.HashMismatchError`) and leaves nothing; the final renames (labels.csv last)
    mean a killed download never looks complete.
    """
    data_folder = Path(data_folder).absolute()
    if (data_folder / "labels.csv").exists() or (data_folder / "audio").exists():
        raise DataPrepError(f"{data_folder} holds a partial copy (labels.csv or audio/ without the other); "
                            "remove it or pass another --data_folder")
    logger.info("Downloading the Speech-to-Intent benchmark from %s into %s", url, data_folder)

    def keep(member: str) -> bool:  # members: speech-to-intent-benchmark-<commit>/data/...
        return member.split("/")[1:4] == ["data", "speech", "clean"] or member.endswith("data/label/label.json")

    sha256 = sha256 or os.environ.get("DLD_S2I_SHA256") or S2I_SHA256
    with downloaded_archive(url, data_folder, keep, ".s2i_download_", sha256, "set it in DLD_S2I_SHA256",
                            content_pinned=S2I_CONTENT_SHA256 is not None) as root:
        releases = [p for p in root.glob("*") if (p / "data" / "label" / "label.json").is_file()]
        if not releases:
            raise DataPrepError(f"the archive from {url} has no data/label/label.json")
        built = root.parent / "built"
        count = build_from_release(releases[0], built)
        if not sha256:
            verify_tree(built, S2I_CONTENT_MEMBERS, S2I_CONTENT_SHA256, S2I_CONTENT_FILES or 0,
                        f"Speech-to-Intent coffee orders (commit {S2I_COMMIT}) downloaded from {url}", audio_digest)
        os.replace(built / "audio", data_folder / "audio")
        os.replace(built / "labels.csv", data_folder / "labels.csv")  # last: marks the copy complete
        logger.info("Speech-to-Intent: %d orders written to %s", count, data_folder)
    return data_folder


def locate_speech_to_intent(
    data_folder: str | os.PathLike, fallback_folders: Iterable[str | os.PathLike] = (), download: bool = False,
    url: str = S2I_URL, sha256: Optional[str] = None,
) -> Path:
    """The first of ``data_folder`` and ``fallback_folders`` holding ``labels.csv`` and ``audio/``; else,
    with ``download``, the public release is downloaded into ``data_folder`` (``sha256``: its pinned hash,
    see :func:`download_speech_to_intent`)."""
    candidates = [Path(data_folder).expanduser().absolute()]
    candidates += [Path(f).expanduser().absolute() for f in fallback_folders]
    for folder in candidates:
        if (folder / "labels.csv").is_file() and (folder / "audio").is_dir():
            logger.info("Using the Speech-to-Intent coffee orders in %s", folder)
            return folder
    looked = ", ".join(map(str, candidates))
    advice = ("Pass --data_folder pointing at a copy (audio/<id>.flac + labels.csv, built from "
              "github.com/Picovoice/speech-to-intent-benchmark data/speech/clean and data/label/label.json)")
    if not download:
        raise DataPrepError(f"Speech-to-Intent coffee orders not found: no labels.csv + audio/ in {looked}. "
                            f"{advice}, or allow the download (download: True).")
    try:
        return download_speech_to_intent(candidates[0], url, sha256)
    except DataPrepError:
        raise
    except Exception as err:
        raise DataPrepError(f"Speech-to-Intent coffee orders not found in {looked}, and the download from {url} "
                            f"failed ({type(err).__name__}: {err}). {advice}.") from err


def read_labels(folder: Path) -> list[dict]:
    """Rows of ``labels.csv``; DataPrepError naming the file when it is empty, lacks columns or a label."""
    path = folder / "labels.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "path", LABEL_COLUMN) if c not in header]
        if missing:
            raise DataPrepError(f"{path} lacks columns {missing} (header: {header})")
        rows = list(reader)
    if not rows:
        raise DataPrepError(f"{path} has no rows")
    seen = set()
    for i, row in enumerate(rows, start=2):
        if not (row["id"] or "").strip() or not (row[LABEL_COLUMN] or "").strip():
            raise DataPrepError(f"{path}, line {i}: empty id or {LABEL_COLUMN}")
        if row["id"] in seen:
            raise DataPrepError(f"{path}, line {i}: duplicate id {row['id']}")
        seen.add(row["id"])
    return rows


def read_transcripts(folder: Path) -> dict[str, str]:
    """``{id: machine transcript}`` from the Whisper TSV, or {} when it is absent."""
    path = folder / TRANSCRIPTS
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader, None)  # header
        return {row[0]: row[1].strip() for row in reader if len(row) >= 2}


def stratified_split(
    labels: dict[str, str], seed: int = 1234, valid_frac: float = 0.15, test_frac: float = 0.15
) -> dict[str, list[str]]:
    """Split ``{id: label}`` into ``{"train", "valid", "test"}`` id lists, stratified by label.

    Per label (in sorted order) its ids are sorted, shuffled with one ``random.Random(seed)`` and cut:
    ``round(n * test_frac)`` to test, ``round(n * valid_frac)`` to valid (at least one each when the
    fraction is > 0 and the label has 3+ utterances), the rest to train. Deterministic for a seed; the
    three lists are disjoint and cover every id.
    """
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise DataPrepError(f"need 0 <= valid_frac, test_frac and valid_frac + test_frac < 1, got "
                            f"valid_frac={valid_frac}, test_frac={test_frac}")
    by_label: dict[str, list[str]] = defaultdict(list)
    for utt, label in labels.items():
        by_label[label].append(utt)
    rng = random.Random(seed)
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        rng.shuffle(ids)
        n = len(ids)

        def count(frac):
            k = round(n * frac)
            return max(k, 1) if frac > 0 and n >= 3 else k

        n_test, n_valid = count(test_frac), count(valid_frac)
        split["test"] += ids[:n_test]
        split["valid"] += ids[n_test:n_test + n_valid]
        split["train"] += ids[n_test + n_valid:]
    return {s: sorted(ids) for s, ids in split.items()}


def prepare_speech_to_intent(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    seed: int = 1234,
    valid_frac: float = 0.15,
    test_frac: float = 0.15,
    *,
    fallback_folders: Iterable[str | os.PathLike] = (),
    max_per_class: Optional[int] = None,
    download: bool = False,
    url: str = S2I_URL,
) -> dict[str, Path]:
    """Write ``train/valid/test.csv`` (ID, duration, wav, spk_id, wrd, intent = coffeeDrink) under ``save_folder``.

    ``max_per_class`` keeps only that many utterances per drink (quick runs and tests). Skips the work when
    a finished prep with the same options is there. With ``download``, a missing corpus is downloaded into
    ``data_folder`` (see :func:`download_speech_to_intent`). Returns ``{split: csv path}``.
    """
    folder = locate_speech_to_intent(data_folder, fallback_folders, download, url)
    save_folder = Path(save_folder)
    csvs = {split: save_folder / f"{split}.csv" for split in SPLITS}
    labels_file = folder / "labels.csv"
    options = dict(version=PREP_VERSION, folder=str(folder), seed=seed, valid_frac=valid_frac,
                   test_frac=test_frac, max_per_class=max_per_class,
                   labels=(labels_file.stat().st_size, labels_file.stat().st_mtime_ns))
    marker = PrepMarker(save_folder, "speech_to_intent", options)
    if marker.done(list(csvs.values())):
        logger.info("Speech-to-Intent manifests in %s are up to date (same options); skipping", save_folder)
        return csvs
    rows = read_labels(folder)
    if max_per_class is not None:
        kept, per_class = [], defaultdict(int)
        for row in sorted(rows, key=lambda r: r["id"]):
            if per_class[row[LABEL_COLUMN]] < max_per_class:
                per_class[row[LABEL_COLUMN]] += 1
                kept.append(row)
        rows = kept
    by_id = {row["id"]: row for row in rows}
    split = stratified_split({i: r[LABEL_COLUMN] for i, r in by_id.items()}, seed, valid_frac, test_frac)
    transcripts = read_transcripts(folder)
    marker.path.unlink(missing_ok=True)
    for name in SPLITS:
        out = []
        for utt in split[name]:
            row = by_id[utt]
            wav = folder / (row["path"] or f"audio/{utt}.flac")
            if not wav.is_file():
                raise DataPrepError(f"audio file listed in {labels_file} not found: {wav}")
            duration, _, _ = audio_info(wav)
            out.append({"ID": utt, "duration": f"{duration:.3f}", "wav": str(wav.resolve()),
                        "spk_id": UNKNOWN_SPEAKER, "wrd": transcripts.get(utt, ""),
                        "intent": row[LABEL_COLUMN].strip()})
        write_manifest(csvs[name], out, SLU_FIELDS)
        counts = defaultdict(int)
        for r in out:
            counts[r["intent"]] += 1
        logger.info("Speech-to-Intent %s: %d utterances, %.1f min, per drink %s", name, len(out),
                    sum(float(r["duration"]) for r in out) / 60, dict(sorted(counts.items())))
    marker.mark()
    return csvs
