"""Connected-digit ASR corpus built from the Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0).

FSDD holds 3000 isolated digits (6 speakers x 10 digits x 50 takes, 8 kHz mono, ``{digit}_{speaker}_{take}.wav``
in ``recordings/``). We join clips of ONE speaker into strings of ``min_digits..max_digits`` digits with short
random silences, resample to 16 kHz and split speaker-disjointly: training uses every take of the training
speakers (``train_copies`` differently shuffled passes); the held-out speakers' takes 0-24 form the validation
set and takes 25-49 the test set, each take used once. With ``valid_speakers`` (e.g. a speaker fold from
:func:`speaker_fold`) validation and test speakers differ too: the validation speakers' takes 0-24 form the
validation set and every take of the held-out speakers the test set.
One seeded ``random.Random`` drives everything, so the same arguments give byte-identical manifests and
audio. The derived audio stays CC BY-SA 4.0.

``train_digits=(lo, hi)`` makes the training strings ``lo..hi`` digits long (e.g. ``(1, 7)``: isolated digits
included) while validation and test keep ``min_digits..max_digits``, byte for byte the same as without the
option: training then draws from its own seeded generator, and the shared one is advanced exactly as the
default training strings would have advanced it. ``isolated_test=k`` also writes ``test_isolated.csv``: the
first ``k`` test takes of every digit and test speaker, each clip alone (no random draws, so it changes
nothing else).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import soundfile
import torch
import torchaudio

from dld_brain.data.manifest import DataPrepError, PrepMarker, audio_info, downloaded_archive, write_manifest
from dld_brain.safe_files import verify_tree

logger = logging.getLogger(__name__)

DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas")
TAKES = 50  # takes per digit and speaker; held out: 0-24 valid, 25-49 test
#: The release pinned by commit (the one our local copy was made from; a tag can move).
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.zip"
#: What the download must hold: the content digest (:func:`dld_brain.safe_files.tree_digest`) of the 3000
#: ``recordings/*.wav`` kept from the archive at FSDD_URL, computed from our copy of that commit
#: (``tests/test_untrusted.py`` recomputes it from the copy in ../shared/data/fsdd). The archive's own sha256
#: could not be obtained where this was written (no GitHub access) and GitHub does not promise stable archive
#: bytes, so the kept files are what is pinned; they are checked before anything is put in place.
FSDD_CONTENT_SHA256 = "baa3a6dcf4da47fb3075bec71a8cefb512022cb9ae030a79a31b315f37bc67af"
FSDD_CONTENT_FILES = 3000
#: Optional sha256 of the archive itself (also ``$DLD_FSDD_SHA256``); when given it is checked before
#: unpacking and replaces the content check (to use another release on purpose).
FSDD_SHA256: Optional[str] = None
SPLITS = ("train", "valid", "test")
PREP_VERSION = 2  # bump when the generated audio or manifests change, so old preps are redone

Clip = tuple[int, int]  # (digit, take)


def digits_to_words(digits: Sequence[int]) -> str:
    """``[3, 1, 4]`` -> ``"THREE ONE FOUR"`` (the transcript of a digit string)."""
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


# ---------------------------------------------------------------------------------------------- locating
def _holds_fsdd(folder: Path) -> bool:
    """True when ``folder`` directly holds FSDD-named wavs (``{digit}_{speaker}_{take}.wav``)."""
    return folder.is_dir() and any(folder.glob("[0-9]_*_*.wav"))


def _fsdd_root(folder: Path) -> Optional[Path]:
    """The FSDD root for ``folder``: itself if it has ``recordings/*.wav``, its parent if it IS ``recordings``."""
    if _holds_fsdd(folder / "recordings"):
        return folder
    if folder.name == "recordings" and _holds_fsdd(folder):
        return folder.parent
    return None


def _kept_member(member: str) -> bool:
    """Archive members kept: ``<top>/recordings/`` and the wavs directly in it."""
    parts = member.rstrip("/").split("/")
    return parts[1:2] == ["recordings"] and (len(parts) == 2 or (len(parts) == 3 and parts[2].endswith(".wav")))


def download_fsdd(data_folder: str | os.PathLike, url: str = FSDD_URL, sha256: Optional[str] = None) -> Path:
    """Download the FSDD release zip and keep only its ``recordings/*.wav`` as ``data_folder/recordings``.

    Verified before anything is put in place: with an archive sha256 (``sha256``, else ``$DLD_FSDD_SHA256``,
    else FSDD_SHA256) the archive is checked before it is unpacked; otherwise the kept wavs, safely extracted
    into a hidden temp folder, must have the pinned content digest FSDD_CONTENT_SHA256. A mismatch is one line
    (:class:`dld_brain.safe_files.HashMismatchError`) and leaves nothing; the final rename means a killed
    download never looks complete.
    """
    data_folder = Path(data_folder).absolute()
    target = data_folder / "recordings"
    if target.exists() and any(target.iterdir()):
        raise DataPrepError(f"{target} exists but holds no FSDD wavs; remove it or pass another --data_folder")
    logger.info("Downloading FSDD from %s into %s", url, data_folder)
    # members look like free-spoken-digit-dataset-<commit>/recordings/x.wav
    sha256 = sha256 or os.environ.get("DLD_FSDD_SHA256") or FSDD_SHA256
    with downloaded_archive(url, data_folder, _kept_member, ".fsdd_download_", sha256,
                            "set it in DLD_FSDD_SHA256", content_pinned=True) as root:
        extracted = [p for p in root.glob("*/recordings") if _holds_fsdd(p)]
        if not extracted:
            raise DataPrepError(f"the archive from {url} has no recordings/*.wav")
        if not sha256:
            verify_tree(extracted[0].parent, ["recordings"], FSDD_CONTENT_SHA256, FSDD_CONTENT_FILES,
                        f"FSDD (commit {FSDD_COMMIT}) downloaded from {url}")
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(extracted[0], target)
    return data_folder


def locate_fsdd(
    data_folder: str | os.PathLike,
    fallback_folders: Iterable[str | os.PathLike] = (),
    download: bool = True,
) -> Path:
    """Return an FSDD root (a folder with ``recordings/*.wav``): ``data_folder``, then each fallback, else download.

    A folder is accepted in the repo layout (``<folder>/recordings/*.wav``) or when it is the ``recordings``
    folder itself (its parent is returned). Relative fallbacks are resolved against the working directory.
    """
    candidates = [Path(data_folder).expanduser().absolute()]
    candidates += [Path(f).expanduser().absolute() for f in fallback_folders]
    for folder in candidates:
        root = _fsdd_root(folder)
        if root is not None:
            logger.info("Using FSDD recordings in %s", root / "recordings")
            return root
    looked = ", ".join(str(f) for f in candidates)
    advice = ("Pass --data_folder pointing at a copy of FSDD that contains recordings/*.wav, "
              "or allow the download (download: True) on a machine with network access.")
    if not download:
        raise DataPrepError(f"FSDD not found: looked in {looked} (download disabled). {advice}")
    try:
        return download_fsdd(candidates[0])
    except Exception as err:
        raise DataPrepError(f"FSDD not found: looked in {looked}, and the download from {FSDD_URL} into "
                            f"{candidates[0]} failed ({type(err).__name__}: {err}). {advice}") from err


# ----------------------------------------------------------------------------------------------- folds
def speaker_fold(fold: int, num_folds: int = 3) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(train, valid, test)`` speakers of fold ``fold`` (0-based) out of ``num_folds`` rotating folds.

    The speakers are cut into ``num_folds`` consecutive test groups (sizes differ by at most one), so every
    speaker is tested exactly once across the folds; the first speaker of the next group validates (never a
    test speaker of the same fold), the rest train. FSDD has 6 speakers: 3 folds give 3 train / 1 valid /
    2 test speakers per fold, 6 folds give 4 / 1 / 1.
    """
    if not 2 <= num_folds <= len(SPEAKERS):
        raise DataPrepError(f"num_folds must be 2..{len(SPEAKERS)} (FSDD has {len(SPEAKERS)} speakers: "
                            f"each fold needs a training, a validation and a test speaker), got {num_folds}")
    if not 0 <= fold < num_folds:
        raise DataPrepError(f"fold must be 0..{num_folds - 1} for num_folds={num_folds}, got {fold}")
    bounds = [round(i * len(SPEAKERS) / num_folds) for i in range(num_folds + 1)]
    groups = [SPEAKERS[bounds[i]:bounds[i + 1]] for i in range(num_folds)]
    test = groups[fold]
    valid = groups[(fold + 1) % num_folds][:1]
    train = tuple(s for s in SPEAKERS if s not in test and s not in valid)
    return train, valid, test


# --------------------------------------------------------------------------------------------- options
def _speakers(value: str | Sequence[str]) -> tuple[str, ...]:
    """A speaker list as a tuple (a single name is accepted too)."""
    return (value,) if isinstance(value, str) else tuple(value)


def _split_takes(split: str, takes_per_digit: Optional[int], own_speakers: bool = False) -> list[int]:
    """Take indices a split uses: train all (or < k); valid 0-24 and test 25-49 (or their first ceil(k/2));
    ``own_speakers`` (test speakers that do not share their takes with validation): test uses all (or < k)."""
    if split == "train" or (split == "test" and own_speakers):
        return list(range(TAKES if takes_per_digit is None else takes_per_digit))
    base = range(0, TAKES // 2) if split == "valid" else range(TAKES // 2, TAKES)
    keep = len(base) if takes_per_digit is None else math.ceil(takes_per_digit / 2)
    return list(base)[:keep]


def _can_split(n: int, lo: int, hi: int) -> bool:
    """True when ``n`` clips can be cut into groups of ``lo..hi`` clips (n = 0 trivially)."""
    return n == 0 or any(k * lo <= n <= k * hi for k in range(1, n // lo + 1))


def _check_options(train_speakers, heldout_speakers, min_digits, max_digits, train_copies, sample_rate,
                   gap_range_s, takes_per_digit, valid_speakers=None, train_digits=None) -> None:
    """Raise DataPrepError for options that cannot give a speaker-disjoint corpus of min..max digit strings."""
    if not train_speakers or not heldout_speakers or valid_speakers == ():
        raise DataPrepError("need at least one training and one held-out FSDD speaker (and one validation "
                            "speaker when valid_speakers is given)")
    named = {"train_speakers": train_speakers, "heldout_speakers": heldout_speakers,
             "valid_speakers": valid_speakers or ()}
    for name, speakers in named.items():
        if len(set(speakers)) != len(speakers):
            raise DataPrepError(f"{name} lists a speaker twice: {list(speakers)}")
    unknown = sorted(set().union(*named.values()) - set(SPEAKERS))
    if unknown:
        raise DataPrepError(f"unknown FSDD speakers {unknown}; FSDD has {list(SPEAKERS)}")
    names = list(named)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            overlap = sorted(set(named[first]) & set(named[second]))
            if overlap:
                raise DataPrepError(f"speakers {overlap} are both in {first} and {second}; "
                                    "the split must be speaker-disjoint")
    if not 1 <= min_digits <= max_digits:
        raise DataPrepError(f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, "
                            f"max_digits={max_digits}")
    if train_copies < 1:
        raise DataPrepError(f"train_copies must be >= 1, got {train_copies}")
    if sample_rate <= 0:
        raise DataPrepError(f"sample_rate must be positive, got {sample_rate}")
    if len(gap_range_s) != 2 or not 0 <= gap_range_s[0] <= gap_range_s[1]:
        raise DataPrepError(f"gap_range_s must be (low, high) seconds with 0 <= low <= high, got {gap_range_s}")
    if takes_per_digit is not None and not 1 <= takes_per_digit <= TAKES:
        raise DataPrepError(f"takes_per_digit must be None or 1..{TAKES}, got {takes_per_digit}")
    if train_digits is not None and (len(train_digits) != 2 or not 1 <= train_digits[0] <= train_digits[1]):
        raise DataPrepError(f"train_digits must be (low, high) with 1 <= low <= high, got {train_digits}")
    for split in SPLITS:
        n = 10 * len(_split_takes(split, takes_per_digit, valid_speakers is not None))
        lo, hi = train_digits if split == "train" and train_digits is not None else (min_digits, max_digits)
        if not _can_split(n, lo, hi):
            raise DataPrepError(f"{split}: {n} clips per speaker cannot be cut into strings of "
                                f"{lo}..{hi} digits; widen the range or change takes_per_digit")


# ------------------------------------------------------------------------------------------ audio
def _clip_path(root: Path, speaker: str, clip: Clip) -> Path:
    """Path of one FSDD clip."""
    return root / "recordings" / f"{clip[0]}_{speaker}_{clip[1]}.wav"


def _check_clips(root: Path, plan: dict[str, list[tuple[str, list[Clip]]]]) -> None:
    """Fail early, naming files, when a needed clip is missing, unreadable or empty."""
    paths = sorted({_clip_path(root, spk, c) for jobs in plan.values() for spk, clips in jobs for c in clips})
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataPrepError(f"{len(missing)} FSDD clips missing from {root / 'recordings'}: "
                            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. "
                            "Use a complete copy (3000 wavs) or allow the download into an empty --data_folder.")
    for path in paths:
        audio_info(path)  # DataPrepError naming an unreadable or empty file


def _read_clip(path: Path, sample_rate: int) -> torch.Tensor:
    """One clip as float32 mono at ``sample_rate``; DataPrepError naming the file if it cannot be decoded."""
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for broken files
        raise DataPrepError(f"unreadable FSDD clip {path}: {err}. Replace it with a good copy.") from err
    if audio.shape[0] == 0:
        raise DataPrepError(f"empty FSDD clip (0 samples): {path}")
    clip = torch.from_numpy(audio.mean(axis=1))
    return torchaudio.functional.resample(clip, rate, sample_rate) if rate != sample_rate else clip


@contextlib.contextmanager
def _one_torch_thread():
    """Run with one torch thread: FSDD clips are tiny, so threads only add overhead (80x slower on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _to_pcm16(audio: torch.Tensor) -> np.ndarray:
    """Float audio -> int16 samples (rounded, clipped), so the written bytes do not depend on libsndfile."""
    return np.clip(np.round(audio.numpy().astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------- generation
def _group_sizes(n: int, lo: int, hi: int, rng: random.Random) -> list[int]:
    """Random sizes in ``lo..hi`` that sum to ``n`` (each step picks among sizes that keep the rest feasible)."""
    sizes = []
    while n:
        size = rng.choice([s for s in range(lo, min(hi, n) + 1) if _can_split(n - s, lo, hi)])
        sizes.append(size)
        n -= size
    return sizes


def _plan(train_speakers, heldout_speakers, train_copies, takes_per_digit, valid_speakers=None) -> dict:
    """``{split: [(speaker, clips of one pass)]}``: train has ``train_copies`` passes per speaker, held out one;
    validation uses ``valid_speakers`` when given (then the test speakers' every take is tested)."""
    own = valid_speakers is not None

    def clips(split):
        return [(d, t) for d in range(10) for t in _split_takes(split, takes_per_digit, own)]
    return {"train": [(spk, clips("train")) for spk in train_speakers for _ in range(train_copies)],
            "valid": [(spk, clips("valid")) for spk in (valid_speakers if own else heldout_speakers)],
            "test": [(spk, clips("test")) for spk in heldout_speakers]}


def _utterances(jobs, rng: random.Random, min_digits: int, max_digits: int):
    """Yield ``(speaker, clips)`` digit strings: each pass is shuffled and cut into min..max clip groups."""
    for spk, clips in jobs:
        clips = list(clips)
        rng.shuffle(clips)
        start = 0
        for size in _group_sizes(len(clips), min_digits, max_digits, rng):
            yield spk, clips[start:start + size]
            start += size


def _advance(rng: random.Random, jobs, min_digits: int, max_digits: int, gap_range_s: tuple[float, float]) -> None:
    """Consume exactly the draws :func:`_write_split` makes for ``jobs`` (shuffles, sizes, one gap per joint)
    without reading or writing audio."""
    for _, group in _utterances(jobs, rng, min_digits, max_digits):
        for _ in group[1:]:
            rng.uniform(*gap_range_s)


def _write_isolated(jobs, root: Path, save_folder: Path, cache: dict, sample_rate: int, takes: int) -> list[dict]:
    """``test_isolated``: the first ``takes`` takes of each digit of each test speaker, one clip per utterance."""
    wav_dir = save_folder / "wavs" / "test_isolated"
    if wav_dir.exists():
        shutil.rmtree(wav_dir)
    wav_dir.mkdir(parents=True)
    rows = []
    for spk, clips in jobs:
        kept = sorted({t for _, t in clips})[:takes]
        for digit, take in sorted(c for c in clips if c[1] in kept):
            path = _clip_path(root, spk, (digit, take))
            if path not in cache:
                cache[path] = _read_clip(path, sample_rate)
            samples = _to_pcm16(cache[path])
            utt_id = f"fsdd_iso_{spk}_{digit}_{take:02d}"
            wav = wav_dir / f"{utt_id}.wav"
            soundfile.write(str(wav), samples, sample_rate, subtype="PCM_16")
            rows.append({"ID": utt_id, "duration": f"{len(samples) / sample_rate:.3f}", "wav": str(wav.resolve()),
                         "spk_id": spk, "wrd": DIGIT_WORDS[digit]})
    return rows


def _write_split(split: str, jobs, root: Path, save_folder: Path, rng: random.Random, cache: dict,
                 sample_rate: int, gap_range_s: tuple[float, float], min_digits: int, max_digits: int) -> list[dict]:
    """Write one split's wavs (fresh folder) and return its manifest rows."""
    wav_dir = save_folder / "wavs" / split
    if wav_dir.exists():
        shutil.rmtree(wav_dir)  # stale audio from a prep with other options
    wav_dir.mkdir(parents=True)
    rows, counters = [], {}
    for spk, group in _utterances(jobs, rng, min_digits, max_digits):
        pieces = []
        for i, clip in enumerate(group):
            path = _clip_path(root, spk, clip)
            if path not in cache:
                cache[path] = _read_clip(path, sample_rate)
            if i:
                pieces.append(torch.zeros(int(rng.uniform(*gap_range_s) * sample_rate)))
            pieces.append(cache[path])
        counters[spk] = counters.get(spk, -1) + 1
        utt_id = f"fsdd_{split}_{spk}_{counters[spk]:04d}"
        samples = _to_pcm16(torch.cat(pieces))
        wav = wav_dir / f"{utt_id}.wav"
        soundfile.write(str(wav), samples, sample_rate, subtype="PCM_16")
        rows.append({"ID": utt_id, "duration": f"{len(samples) / sample_rate:.3f}", "wav": str(wav.resolve()),
                     "spk_id": spk, "wrd": digits_to_words([d for d, _ in group])})
    return rows


def _log_summary(split: str, rows: list[dict]) -> None:
    """One line per split: utterances, hours/minutes, speakers."""
    seconds = sum(float(r["duration"]) for r in rows)
    speakers = sorted({r["spk_id"] for r in rows})
    logger.info("FSDD %s: %d utterances, %.2f h (%.1f min), %d speakers (%s)", split, len(rows), seconds / 3600,
                seconds / 60, len(speakers), ", ".join(speakers))


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
    valid_speakers: Optional[Sequence[str]] = None,
    train_digits: Optional[Sequence[int]] = None,
    isolated_test: int = 0,
) -> dict[str, Path]:
    """Write ``train/valid/test.csv`` (ID, duration, wav, spk_id, wrd) and 16-bit wavs under ``save_folder``.

    ``valid_speakers``: validate on these speakers instead of the held-out (test) ones; e.g.
    ``train, valid, test = speaker_fold(k)`` then ``train_speakers=train, valid_speakers=valid,
    heldout_speakers=test``. ``train_digits=(lo, hi)``: training strings of lo..hi digits, validation and test
    unchanged (see the module docstring); ``isolated_test=k`` adds ``test_isolated.csv`` (``k`` takes per digit
    and test speaker, one digit per utterance). Skips the work when a finished prep with the same options is there. Returns
    ``{split: csv path}``.
    """
    train_speakers, heldout_speakers = _speakers(train_speakers), _speakers(heldout_speakers)
    valid_speakers = None if valid_speakers is None else _speakers(valid_speakers)
    gap_range_s = tuple(float(g) for g in gap_range_s)
    train_digits = None if train_digits is None else tuple(int(d) for d in train_digits)
    if train_digits == (min_digits, max_digits):
        train_digits = None  # the default prep, byte for byte
    isolated_test = int(isolated_test or 0)
    _check_options(train_speakers, heldout_speakers, min_digits, max_digits, train_copies, sample_rate,
                   gap_range_s, takes_per_digit, valid_speakers, train_digits)
    if isolated_test < 0:
        raise DataPrepError(f"isolated_test must be >= 0 (takes per digit and test speaker), got {isolated_test}")
    save_folder = Path(save_folder)
    csvs = {split: save_folder / f"{split}.csv" for split in SPLITS}
    options = dict(version=PREP_VERSION, seed=seed, train_speakers=train_speakers,
                   heldout_speakers=heldout_speakers, min_digits=min_digits, max_digits=max_digits,
                   train_copies=train_copies, sample_rate=sample_rate, gap_range_s=gap_range_s,
                   takes_per_digit=takes_per_digit)
    if valid_speakers is not None:  # only then: preps made before this option stay valid
        options["valid_speakers"] = valid_speakers
    if train_digits is not None:  # likewise
        options["train_digits"] = train_digits
    if isolated_test:
        options["isolated_test"] = isolated_test
        csvs["test_isolated"] = save_folder / "test_isolated.csv"
    marker = PrepMarker(save_folder, "fsdd", options)
    if marker.done([*csvs.values(), *(save_folder / "wavs" / s for s in SPLITS)]):
        logger.info("FSDD manifests in %s are up to date (same options); skipping preparation", save_folder)
        return csvs
    root = locate_fsdd(data_folder, fallback_folders, download)
    plan = _plan(train_speakers, heldout_speakers, train_copies, takes_per_digit, valid_speakers)
    _check_clips(root, plan)
    marker.path.unlink(missing_ok=True)  # a prep killed from here on must not pass for the old one
    rng, cache = random.Random(seed), {}
    with _one_torch_thread():
        for split in SPLITS:
            split_rng, lo, hi = rng, min_digits, max_digits
            if split == "train" and train_digits is not None:
                split_rng, (lo, hi) = random.Random(f"{seed}:train:{train_digits[0]}-{train_digits[1]}"), train_digits
                _advance(rng, plan["train"], min_digits, max_digits, gap_range_s)  # valid/test as by default
            rows = _write_split(split, plan[split], root, save_folder, split_rng, cache, sample_rate, gap_range_s,
                                lo, hi)
            write_manifest(csvs[split], rows)
            _log_summary(split, rows)
        if isolated_test:
            rows = _write_isolated(plan["test"], root, save_folder, cache, sample_rate, isolated_test)
            write_manifest(csvs["test_isolated"], rows)
            _log_summary("test_isolated", rows)
    marker.mark()
    return csvs
