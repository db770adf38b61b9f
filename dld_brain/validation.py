"""Checking manifest rows before training, so bad data is handled by a rule and never crashes a run
deep inside the DataLoader or corrupts a batch silently.

Rules (each problem is counted, logged with the file names, and written to ``skipped_<set>.txt``):

==============================================  ================================================
problem                                          rule
==============================================  ================================================
audio missing, unreadable, truncated, 0 samples  skip the row (``on_bad_data: error`` -> stop)
shorter than ``min_duration_s``                  skip (too short for the 4x front-end / CTC)
silent (peak below ``silence_peak``)             skip (the transcript cannot be right)
empty transcript                                 skip
characters the tokenizer cannot encode           skip (they would map to <unk> = the CTC blank)
other sample rate / stereo                       kept: resampled / channels averaged at load time
==============================================  ================================================

``check_audio: header`` reads only file headers (fast, for large corpora); ``full`` also decodes the
samples (detects truncation and silence); ``off`` trusts the manifest.

The audio checks of a manifest run once, on the main process, with a progress bar and headers read in
parallel (:func:`cached_audio_problems`); their result is kept next to the manifest in a sidecar
``.<manifest>.audio_check.json`` keyed by the manifest's SHA-1 and the check options, so later launches,
other methods, every rank and every evaluation reuse it while the manifest is unchanged.

Test sets follow other rules (:func:`split_test_rows`): a reference is never dropped for its text, since
that would shrink the WER's denominator (a LibriSpeech model scored on TED-LIUM 3 would lose exactly the
references it cannot spell); such references are decoded and scored, their missing units count as errors,
and how many there are is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile

logger = logging.getLogger(__name__)

CHECK_LEVELS = ("off", "header", "full")


class BadDataError(RuntimeError):
    """Bad rows found with ``on_bad_data: error``; the message lists them."""


def wav_declared_frames(path: str) -> Optional[int]:
    """Sample frames a RIFF/WAVE header declares (None if not a plain WAV): libsndfile silently clamps a
    truncated WAV to what is on disk, so truncation is found by comparing with this."""
    import struct

    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = handle.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif name == b"data":
                return size // block_align if block_align else None
            else:
                handle.seek(size + (size & 1), 1)


def audio_problem(wav: str, min_duration_s: float, silence_peak: float, level: str,
                  start: Optional[int] = None, stop: Optional[int] = None) -> Optional[str]:
    """Why the audio of a row cannot be used, or None if it can."""
    if level == "off":
        return None
    if not Path(wav).is_file():
        return "audio file missing"
    try:
        info = soundfile.info(wav)
    except Exception as err:
        return f"unreadable audio ({type(err).__name__}: {str(err).strip()[:80]})"
    if info.frames <= 0:
        return "audio has 0 samples"
    declared = wav_declared_frames(wav) if info.format == "WAV" else None
    if declared is not None and declared > info.frames:
        return f"truncated audio (header declares {declared} samples, the file holds {info.frames})"
    frames = info.frames if start is None or stop is None else stop - start
    if start is not None and stop is not None and stop > info.frames:
        return f"segment ends at sample {stop} beyond the file's {info.frames}"
    if frames / info.samplerate < min_duration_s:
        return f"too short ({frames / info.samplerate:.3f} s < {min_duration_s} s)"
    if level == "full":
        try:
            audio, _ = soundfile.read(wav, start=start or 0, stop=stop, dtype="float32", always_2d=True)
        except Exception as err:
            return f"audio cannot be decoded ({type(err).__name__}: {str(err).strip()[:80]})"
        if audio.shape[0] < frames:
            return f"truncated audio ({audio.shape[0]} of {frames} samples decoded)"
        if np.abs(audio).max() < silence_peak:
            return f"silent audio (peak {np.abs(audio).max():.1e} < {silence_peak})"
    return None


def text_problem(text: str, sp) -> Optional[str]:
    """Why a transcript cannot be a CTC target for SentencePiece model ``sp``, or None."""
    if not text or not text.strip():
        return "empty transcript"
    if sp is None:
        return None
    unk = sp.unk_id()
    pieces = sp.encode_as_pieces(text)
    ids = sp.encode_as_ids(text)
    bad = sorted({p for p, i in zip(pieces, ids) if i == unk})
    if bad:
        return f"transcript has units the tokenizer does not know: {bad[:5]}"
    return None


def check_rows(
    rows: Sequence[dict],
    sp=None,
    level: str = "header",
    min_duration_s: float = 0.1,
    silence_peak: float = 1e-4,
    audio_problems: Optional[dict[str, str]] = None,
) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Split manifest rows into (usable rows, [(ID, wav, reason), ...]).

    ``audio_problems`` ({ID: reason}, from :func:`cached_audio_problems`) replaces the audio checks; without
    it every row's audio is checked here (slow for a large corpus)."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"check_audio must be one of {CHECK_LEVELS}, got {level!r}")
    kept, problems = [], []
    for row in rows:
        if audio_problems is not None:
            audio_reason = audio_problems.get(row["ID"])
        else:
            audio_reason = audio_problem(row["wav"], min_duration_s, silence_peak, level,
                                         _int_or_none(row.get("start")), _int_or_none(row.get("stop")))
        reason = text_problem(row.get("wrd", ""), sp) or audio_reason
        if reason:
            problems.append((row["ID"], row["wav"], reason))
        else:
            kept.append(row)
    return kept, problems


def split_test_rows(
    rows: Sequence[dict], sp=None, audio_problems: Optional[dict[str, str]] = None,
) -> tuple[list[dict], list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Test-set rules: ``(scored rows, [(ID, wrd, units the tokenizer lacks)], [(ID, wav, reason)])``.

    A reference whose units the tokenizer cannot encode stays in the set (listed in the second list): the
    model is scored on it and every word it cannot output counts as an error. Rows whose audio cannot be
    decoded (``audio_problems``) are listed in the third list; the caller scores them as empty hypotheses
    (every reference word a deletion), so no reference leaves the WER. Only a row with an empty reference
    (nothing to score) is ignored, and it is listed there too.
    """
    scored, outside, unreadable = [], [], []
    for row in rows:
        text = row.get("wrd", "")
        if not text or not text.strip():
            unreadable.append((row["ID"], row["wav"], "empty transcript"))
            continue
        reason = (audio_problems or {}).get(row["ID"])
        if reason:
            unreadable.append((row["ID"], row["wav"], reason))
            continue
        lacking = text_problem(text, sp)
        if lacking:
            outside.append((row["ID"], text, lacking))
        scored.append(row)
    return scored, outside, unreadable


def manifest_digest(csv_path: str | os.PathLike) -> str:
    """SHA-1 of a manifest's bytes (the key under which its audio checks are cached)."""
    digest = hashlib.sha1()
    with open(csv_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def audio_check_sidecar(csv_path: str | os.PathLike) -> Path:
    """Where the audio checks of ``csv_path`` are cached: ``.<name>.audio_check.json`` beside it."""
    csv_path = Path(csv_path)
    return csv_path.parent / f".{csv_path.name}.audio_check.json"


def _check_one(task: tuple) -> Optional[str]:
    """:func:`audio_problem` of one ``(wav, start, stop, min_duration_s, silence_peak, level)`` (picklable)."""
    wav, start, stop, min_duration_s, silence_peak, level = task
    return audio_problem(wav, min_duration_s, silence_peak, level, start, stop)


def audio_problems_parallel(rows: Sequence[dict], level: str = "header", min_duration_s: float = 0.1,
                            silence_peak: float = 1e-4, process_count: Optional[int] = None,
                            progress_bar: bool = True) -> dict[str, str]:
    """``{ID: reason}`` for the rows whose audio cannot be used, checked in parallel with a progress bar
    (SpeechBrain's ``parallel_map``, as its LibriSpeech preparation reads headers). Small manifests (or
    one available CPU, ``SB_NUM_PROC=1``) are checked in this process, where a pool costs more than it saves."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"check_audio must be one of {CHECK_LEVELS}, got {level!r}")
    if level == "off":
        return {}
    tasks = [(row["wav"], _int_or_none(row.get("start")), _int_or_none(row.get("stop")), min_duration_s,
              silence_peak, level) for row in rows]
    from speechbrain.utils.parallel import get_available_cpu_count, parallel_map

    if process_count is None:
        process_count = 1 if len(tasks) < 2000 else get_available_cpu_count()
    if process_count == 1:
        from tqdm import tqdm

        results = [_check_one(t) for t in tqdm(tasks, disable=not progress_bar, desc="audio check")]
    else:

        results = list(parallel_map(_check_one, tasks, process_count=process_count, chunk_size=64,
                                    progress_bar=progress_bar,
                                    progress_bar_kwargs={"desc": "audio check", "smoothing": 0.02}))
    return {row["ID"]: reason for row, reason in zip(rows, results) if reason}


def cached_audio_problems(csv_path: str | os.PathLike, rows: Sequence[dict], level: str = "header",
                          min_duration_s: float = 0.1, silence_peak: float = 1e-4,
                          process_count: Optional[int] = None, data_root: Optional[str] = None) -> dict[str, str]:
    """The audio problems of manifest ``csv_path`` (whose rows are ``rows``), from its sidecar when that was
    written for the same manifest bytes and options, else checked now (:func:`audio_problems_parallel`)
    and stored. Call it on the main process (``run_on_main``); the other ranks then read the sidecar.
    ``data_root`` (the folder ``$data_root`` was replaced by) is part of the key: a moved corpus is checked
    again."""
    sidecar = audio_check_sidecar(csv_path)
    key = {"manifest_sha1": manifest_digest(csv_path), "level": level, "min_duration_s": float(min_duration_s),
           "silence_peak": float(silence_peak), "data_root": data_root}
    if level == "off":
        return {}
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("key") == key:
            logger.info("Audio checks of %s reused from %s (%d problems)", csv_path, sidecar.name,
                        len(cached["problems"]))
            return dict(cached["problems"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no sidecar, or one from another manifest or options: check again
    began = time.perf_counter()
    problems = audio_problems_parallel(rows, level, min_duration_s, silence_peak, process_count)
    seconds = time.perf_counter() - began
    logger.info("Checked the audio of %d rows of %s (%s) in %.1f s: %d problems; cached in %s", len(rows),
                csv_path, level, seconds, len(problems), sidecar.name)
    tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"key": key, "rows": len(rows), "seconds": round(seconds, 3),
                                   "problems": problems}, indent=0))
        os.replace(tmp, sidecar)
    except OSError as err:  # a read-only prepared corpus: the checks still apply, only not cached
        logger.warning("Could not cache the audio checks of %s in %s: %s", csv_path, sidecar, err)
    return problems


def report_problems(name: str, source: str, total: int, problems: list, report_dir: Optional[Path],
                    on_bad_data: str = "skip") -> None:
    """Log (and write ``skipped_<name>.txt``) the rows dropped from a manifest; raise if asked to."""
    if not problems:
        return
    listing = "\n".join(f"{i}\t{w}\t{r}" for i, w, r in problems)
    if on_bad_data == "error":
        raise BadDataError(f"{len(problems)} of {total} rows of {source} cannot be used "
                           f"(set on_bad_data: skip to drop them):\n{listing}")
    where = ""
    if report_dir is not None:
        path = Path(report_dir) / f"skipped_{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("ID\twav\treason\n" + listing + "\n")
        where = f" (full list in {path})"
    shown = "; ".join(f"{i}: {r} [{w}]" for i, w, r in problems[:5])
    logger.warning("Skipped %d of %d rows of %s%s: %s%s", len(problems), total, source, where, shown,
                   " ..." if len(problems) > 5 else "")


def _int_or_none(value) -> Optional[int]:
    if value in (None, ""):
        return None
    return int(float(value))
