"""Connected-digit ASR corpus built from the Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0).

FSDD holds 3000 isolated digits (6 speakers x 10 digits x 50 takes, 8 kHz). We concatenate clips of one
speaker into strings of ``min_digits..max_digits`` digits with short random silences, resample to 16 kHz
and split speaker-disjointly: train on 4 speakers; the 2 held-out speakers' takes 0-24 are the validation
set and takes 25-49 the test set. Everything comes from one seeded generator, so the same seed gives
byte-identical manifests and audio.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import soundfile
import torch
import torchaudio

from dld_brain.data.manifest import DataPrepError, PrepMarker, write_manifest

logger = logging.getLogger(__name__)

DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas")
TAKES = 50
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.zip"
SOURCE_RATE = 8000


def digits_to_words(digits: Sequence[int]) -> str:
    """``[3, 1, 4]`` -> ``"THREE ONE FOUR"``."""
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


def _has_recordings(folder: Path) -> Optional[Path]:
    """The folder holding FSDD's wavs: ``folder/recordings`` or ``folder`` itself, else None."""
    for candidate in (folder / "recordings", folder):
        if candidate.is_dir() and any(candidate.glob("0_*_0.wav")):
            return candidate
    return None


def download_fsdd(data_folder: Path, url: str = FSDD_URL) -> Path:
    """Download the FSDD release zip and keep ``recordings/`` in ``data_folder`` (atomic: temp + rename)."""
    data_folder.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading FSDD from %s", url)
    with tempfile.TemporaryDirectory(dir=data_folder) as tmp:
        archive = Path(tmp) / "fsdd.zip"
        urllib.request.urlretrieve(url, archive)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        found = next(Path(tmp).glob("*/recordings"), None)
        if found is None:
            raise DataPrepError(f"the archive from {url} has no recordings/ folder")
        target = data_folder / "recordings"
        if target.exists():
            shutil.rmtree(target)
        os.replace(found, target)
    return target


def locate_fsdd(
    data_folder: str | os.PathLike, fallback_folders: Iterable[str | os.PathLike] = (), download: bool = True
) -> Path:
    """Return the folder of FSDD wavs: ``data_folder`` (or its ``recordings/``), then each fallback
    folder, else download into ``data_folder``. Raises DataPrepError naming every folder looked at."""
    looked = []
    for folder in [Path(data_folder), *(Path(f) for f in fallback_folders)]:
        looked.append(str(folder))
        found = _has_recordings(folder)
        if found is not None:
            return found
    if download:
        try:
            return download_fsdd(Path(data_folder))
        except DataPrepError:
            raise
        except Exception as err:
            raise DataPrepError(
                f"FSDD not found in {looked} and the download from {FSDD_URL} failed ({err}). Pass "
                "--data_folder=<folder containing recordings/*.wav> or check the network."
            ) from err
    raise DataPrepError(
        f"FSDD not found in {looked} (download disabled). Pass --data_folder=<folder containing "
        "recordings/*.wav> or set download: True."
    )


def _read_clip(path: Path) -> np.ndarray:
    """One FSDD clip as float32 mono; DataPrepError naming the file if it is missing, unreadable or empty."""
    if not path.is_file():
        raise DataPrepError(f"FSDD clip missing: {path}")
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise DataPrepError(f"unreadable FSDD clip {path}: {err}. Replace it with a good copy.") from err
    if audio.shape[0] == 0:
        raise DataPrepError(f"empty FSDD clip (0 samples): {path}")
    if rate != SOURCE_RATE:
        raise DataPrepError(f"FSDD clip {path} is {rate} Hz; FSDD is {SOURCE_RATE} Hz")
    return audio.mean(axis=1)


def _group(clips: list, rng: random.Random, min_digits: int, max_digits: int) -> list[list]:
    """Cut a shuffled clip list into consecutive groups of min..max clips (the last absorbs a short tail)."""
    groups, i = [], 0
    while i < len(clips):
        size = rng.randint(min_digits, max_digits)
        group = clips[i:i + size]
        if len(group) < min_digits and groups:
            if len(groups[-1]) + len(group) <= max_digits:
                groups[-1] += group
            else:  # split the tail between the last group and itself
                need = min_digits - len(group)
                group = groups[-1][-need:] + group
                groups[-1] = groups[-1][:-need]
                groups.append(group)
        else:
            groups.append(group)
        i += size
    return groups


def _takes(split: str, takes_per_digit: Optional[int]) -> list[int]:
    """Take indices used by a split (valid: 0-24, test: 25-49, train: all), cut for quick runs."""
    if split == "train":
        return list(range(TAKES if takes_per_digit is None else min(takes_per_digit, TAKES)))
    base = range(0, 25) if split == "valid" else range(25, 50)
    keep = 25 if takes_per_digit is None else max(1, math.ceil(takes_per_digit / 2))
    return list(base)[:keep]


def _check_options(train_speakers, heldout_speakers, min_digits, max_digits, train_copies, gap_range_s):
    unknown = sorted((set(train_speakers) | set(heldout_speakers)) - set(SPEAKERS))
    if unknown:
        raise DataPrepError(f"unknown FSDD speakers {unknown}; FSDD has {list(SPEAKERS)}")
    overlap = sorted(set(train_speakers) & set(heldout_speakers))
    if overlap:
        raise DataPrepError(f"speakers {overlap} are both in training and held out: the split must be "
                            "speaker-disjoint")
    if not train_speakers or not heldout_speakers:
        raise DataPrepError("need at least one training and one held-out speaker")
    if not 1 <= min_digits <= max_digits:
        raise DataPrepError(f"need 1 <= min_digits <= max_digits, got {min_digits}..{max_digits}")
    if train_copies < 1:
        raise DataPrepError(f"train_copies must be >= 1, got {train_copies}")
    if not 0 <= gap_range_s[0] <= gap_range_s[1]:
        raise DataPrepError(f"bad gap_range_s {gap_range_s}")


def prepare_fsdd(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    *,
    fallback_folders: Iterable[str | os.PathLike] = (),
    download: bool = True,
    seed: int = 1234,
    train_speakers: Sequence[str] = ("nicolas", "theo", "yweweler", "george"),
    heldout_speakers: Sequence[str] = ("jackson", "lucas"),
    min_digits: int = 3,
    max_digits: int = 7,
    train_copies: int = 2,
    sample_rate: int = 16000,
    gap_range_s: tuple[float, float] = (0.05, 0.25),
    takes_per_digit: Optional[int] = None,
) -> dict[str, Path]:
    """Write ``train/valid/test.csv`` (ID, duration, wav, spk_id, wrd) and 16-bit wavs under ``save_folder``.

    Skips the work when a previous run with the same options finished. Returns {split: csv path}.
    """
    train_speakers, heldout_speakers = tuple(train_speakers), tuple(heldout_speakers)
    gap_range_s = (float(gap_range_s[0]), float(gap_range_s[1]))
    _check_options(train_speakers, heldout_speakers, min_digits, max_digits, train_copies, gap_range_s)
    save_folder = Path(save_folder)
    csvs = {split: save_folder / f"{split}.csv" for split in ("train", "valid", "test")}
    options = dict(seed=seed, train_speakers=train_speakers, heldout_speakers=heldout_speakers,
                   min_digits=min_digits, max_digits=max_digits, train_copies=train_copies,
                   sample_rate=sample_rate, gap_range_s=gap_range_s, takes_per_digit=takes_per_digit)
    marker = PrepMarker(save_folder, "fsdd", options)
    if marker.done(list(csvs.values())):
        logger.info("FSDD manifests in %s are up to date; skipping preparation", save_folder)
        return csvs
    source = locate_fsdd(data_folder, fallback_folders, download)
    rng = random.Random(seed)
    plan = {"train": [(spk, copy) for spk in train_speakers for copy in range(train_copies)],
            "valid": [(spk, 0) for spk in heldout_speakers], "test": [(spk, 0) for spk in heldout_speakers]}
    cache: dict[Path, torch.Tensor] = {}
    for split, jobs in plan.items():
        wav_dir = save_folder / "wavs" / split
        if wav_dir.exists():
            shutil.rmtree(wav_dir)
        wav_dir.mkdir(parents=True)
        rows, seconds, count = [], 0.0, 0
        for spk, _copy in jobs:
            clips = [(d, t) for d in range(10) for t in _takes(split, takes_per_digit)]
            rng.shuffle(clips)
            for group in _group(clips, rng, min_digits, max_digits):
                utt_id = f"fsdd_{split}_{spk}_{count:04d}"
                count += 1
                audio = _concatenate(source, spk, group, rng, cache, sample_rate, gap_range_s)
                path = wav_dir / f"{utt_id}.wav"
                soundfile.write(str(path), audio, sample_rate, subtype="PCM_16")
                duration = len(audio) / sample_rate
                seconds += duration
                rows.append({"ID": utt_id, "duration": f"{duration:.3f}", "wav": str(path.resolve()),
                             "spk_id": spk, "wrd": digits_to_words(d for d, _ in group)})
        write_manifest(csvs[split], rows)
        logger.info("FSDD %s: %d utterances, %.1f min, speakers %s", split, len(rows), seconds / 60,
                    sorted({spk for spk, _ in jobs}))
    marker.mark()
    return csvs


def _concatenate(source: Path, spk: str, group, rng: random.Random, cache: dict, sample_rate: int,
                 gap_range_s: tuple[float, float]) -> np.ndarray:
    """Resampled clips of one speaker joined by random silences (float32, peak-safe for 16-bit)."""
    pieces = []
    for i, (digit, take) in enumerate(group):
        path = source / f"{digit}_{spk}_{take}.wav"
        if path not in cache:
            clip = torch.from_numpy(_read_clip(path))
            cache[path] = torchaudio.functional.resample(clip, SOURCE_RATE, sample_rate)
        if i:
            gap = int(rng.uniform(*gap_range_s) * sample_rate)
            pieces.append(torch.zeros(gap))
        pieces.append(cache[path])
    audio = torch.cat(pieces).numpy()
    return np.clip(audio, -1.0, 1.0)
