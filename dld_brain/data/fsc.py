"""Fluent Speech Commands (FSC) preparation: intent-classification manifests from the corpus' own split.

FSC (Lugosch et al., 2019) ships ``fluent_speech_commands_dataset/`` with ``data/{train,valid,test}_data.csv``
(header ``,path,speakerId,transcription,action,object,location``; the first, unnamed column is a row index)
and 16 kHz wavs at ``wavs/speakers/<speakerId>/<utterance>.wav`` (the ``path`` column, relative to the
dataset root). The intent is the triple ``action_object_location`` (31 intents, e.g.
``activate_lights_kitchen``); the split is the official speaker-disjoint one.

Manifests: ``train/valid/test.csv`` with ``ID, duration, wav, spk_id, wrd, intent`` (``wrd`` = the
transcription); ``wav`` is ``$data_root/...`` relative to ``data_folder`` (read them with
``replacements={"data_root": data_folder}``), so the corpus and its manifests can move together. Every problem the user must fix raises :class:`DataPrepError` naming the file: missing or
empty CSV, missing columns, missing or unreadable wav, an intent of valid/test that training never shows.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

from dld_brain.data.manifest import DataPrepError, PrepMarker, audio_info, root_relative, write_manifest

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
FSC_DIRNAME = "fluent_speech_commands_dataset"
FSC_COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
SLU_FIELDS = ("ID", "duration", "wav", "spk_id", "wrd", "intent")
PREP_VERSION = 2  # 2: paths relative to $data_root


class UnknownLabelError(DataPrepError):
    """An evaluation utterance carries a label the training set never shows; the message names it."""


def intent_label(action: str, obj: str, location: str) -> str:
    """FSC's intent of one utterance: ``"activate_lights_kitchen"``."""
    return f"{action.strip()}_{obj.strip()}_{location.strip()}"


def _fsc_root(folder: Path) -> Optional[Path]:
    """``folder`` itself when it holds ``data/train_data.csv``, or its ``fluent_speech_commands_dataset``."""
    for root in (folder, folder / FSC_DIRNAME):
        if (root / "data").is_dir() and any((root / "data" / f"{s}_data.csv").exists() for s in SPLITS):
            return root
    return None


def locate_fsc(data_folder: str | os.PathLike, fallback_folders: Iterable[str | os.PathLike] = ()) -> Path:
    """Return the FSC dataset root (the folder with ``data/`` and ``wavs/``): ``data_folder`` or a fallback.

    Each candidate may be the dataset root itself or its parent (holding ``fluent_speech_commands_dataset``).
    """
    candidates = [Path(data_folder).expanduser().absolute()]
    candidates += [Path(f).expanduser().absolute() for f in fallback_folders]
    for folder in candidates:
        root = _fsc_root(folder)
        if root is not None:
            logger.info("Using Fluent Speech Commands in %s", root)
            return root
    raise DataPrepError(
        f"Fluent Speech Commands not found: looked for data/train_data.csv in {', '.join(map(str, candidates))} "
        f"(and their {FSC_DIRNAME}/). FSC is distributed by Fluent.ai under its own license; download it, "
        "extract it and pass --data_folder pointing at the folder fluent_speech_commands_dataset.")


def read_fsc_csv(path: Path) -> list[dict]:
    """Rows of one FSC split CSV; DataPrepError naming the file when it is missing, empty or lacks columns."""
    if not path.is_file():
        raise DataPrepError(f"FSC split file not found: {path}. Use a complete copy of "
                            f"{FSC_DIRNAME} (data/train_data.csv, valid_data.csv, test_data.csv).")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if not header:
            raise DataPrepError(f"FSC split file {path} is empty (no header, no rows)")
        missing = [c for c in FSC_COLUMNS if c not in header]
        if missing:
            raise DataPrepError(f"FSC split file {path} lacks columns {missing} (header: {header}); "
                                f"expected ',{','.join(FSC_COLUMNS)}'")
        rows = list(reader)
    if not rows:
        raise DataPrepError(f"FSC split file {path} has a header but no rows")
    for i, row in enumerate(rows, start=2):
        empty = [c for c in FSC_COLUMNS if not (row.get(c) or "").strip()]
        if empty:
            raise DataPrepError(f"{path}, line {i}: empty {empty}")
    return rows


def _split_rows(root: Path, split: str, data_root: Path) -> list[dict]:
    """Manifest rows of one split, paths ``$data_root/...``; every wav is checked (missing/unreadable ->
    DataPrepError naming it)."""
    source = root / "data" / f"{split}_data.csv"
    rows, seen, duplicates = [], set(), 0
    for row in read_fsc_csv(source):
        rel = row["path"].strip()
        if rel in seen:  # the same recording listed twice: keep it once
            duplicates += 1
            continue
        seen.add(rel)
        wav = root / rel
        if not wav.is_file():
            raise DataPrepError(f"audio file listed in {source} not found: {wav}")
        duration, rate, _ = audio_info(wav)
        if rate != 16000:
            logger.warning("%s is %d Hz (FSC is 16 kHz); it will be resampled at load time", wav, rate)
        spk = row["speakerId"].strip()
        rows.append({"ID": f"{spk}_{Path(rel).stem}", "duration": f"{duration:.3f}", "wav": root_relative(wav.resolve(), data_root),
                     "spk_id": spk, "wrd": row["transcription"].strip(),
                     "intent": intent_label(row["action"], row["object"], row["location"])})
    if duplicates:
        logger.warning("%s lists %d recordings twice; each is used once", source, duplicates)
    return rows


def check_known_labels(train_labels: set, rows: list[dict], source: str | os.PathLike, key: str = "intent") -> None:
    """Raise UnknownLabelError naming the first label of ``rows`` that training never shows, and ``source``."""
    for row in rows:
        if row[key] not in train_labels:
            raise UnknownLabelError(
                f"{key} {row[key]!r} of utterance {row['ID']} in {source} does not occur in the training set, "
                f"so no model can predict it (training has {len(train_labels)} labels: "
                f"{sorted(train_labels)[:10]}{' ...' if len(train_labels) > 10 else ''})")


def prepare_fsc(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    *,
    fallback_folders: Iterable[str | os.PathLike] = (),
) -> dict[str, Path]:
    """Write ``train/valid/test.csv`` (ID, duration, wav, spk_id, wrd, intent) under ``save_folder``.

    Skips the work when a finished prep of the same corpus folder is there. Returns ``{split: csv path}``.
    """
    root = locate_fsc(data_folder, fallback_folders)
    save_folder = Path(save_folder)
    csvs = {split: save_folder / f"{split}.csv" for split in SPLITS}
    sources = [root / "data" / f"{s}_data.csv" for s in SPLITS]
    stamps = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in sources}
    marker = PrepMarker(save_folder, "fsc", dict(version=PREP_VERSION, root=str(root), sources=stamps))
    if marker.done(list(csvs.values())):
        logger.info("FSC manifests in %s are up to date; skipping preparation", save_folder)
        return csvs
    data_root = Path(data_folder).expanduser().resolve()
    rows = {split: _split_rows(root, split, data_root) for split in SPLITS}
    train_labels = {r["intent"] for r in rows["train"]}
    for split in ("valid", "test"):
        check_known_labels(train_labels, rows[split], root / "data" / f"{split}_data.csv")
    marker.path.unlink(missing_ok=True)
    for split in SPLITS:
        write_manifest(csvs[split], rows[split], SLU_FIELDS)
        hours = sum(float(r["duration"]) for r in rows[split]) / 3600
        logger.info("FSC %s: %d utterances, %.2f h, %d speakers, %d intents", split, len(rows[split]), hours,
                    len({r["spk_id"] for r in rows[split]}), len({r["intent"] for r in rows[split]}))
    marker.mark()
    return csvs
