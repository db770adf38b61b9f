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
"""

from __future__ import annotations

import logging
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
) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Split manifest rows into (usable rows, [(ID, wav, reason), ...])."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"check_audio must be one of {CHECK_LEVELS}, got {level!r}")
    kept, problems = [], []
    for row in rows:
        start, stop = _int_or_none(row.get("start")), _int_or_none(row.get("stop"))
        reason = text_problem(row.get("wrd", ""), sp) or audio_problem(
            row["wav"], min_duration_s, silence_peak, level, start, stop)
        if reason:
            problems.append((row["ID"], row["wav"], reason))
        else:
            kept.append(row)
    return kept, problems


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
