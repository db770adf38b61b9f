"""TED-LIUM 3 preparation from the real release layout into segment manifests.

Layout: ``TEDLIUM_release-3/<release_subdir>/{train,dev,test}/sph/<talk>.sph`` and ``.../stm/<talk>.stm``
(``legacy`` is the TED-LIUM 2-compatible partition used in papers; symlinked folders are followed).
The .sph files are NIST SPHERE, 16 kHz 16-bit PCM, read by soundfile (libsndfile). stm lines are
``<talk> <channel> <speaker> <start_s> <end_s> <label> <text>``, e.g.
``AaronHuey_2010X 1 AaronHuey_2010X 8.99 19.91 <o,f0,male> i 'm going to ...``; ``;;`` lines are comments.

Manifests have the columns ``ID, duration, wav, start, stop, spk_id, wrd``: ``wav`` is the talk's .sph
file (``$data_root/...``, relative to ``data_folder``) and ``start``/``stop`` are sample indices (file
rate) of the segment, so the training code reads ``{"file": wav, "start": start, "stop": stop}`` and no
audio is copied. ``ID`` is
``<talk>-<start cs>-<end cs>`` (times in centiseconds, 7 digits, Kaldi's convention); ``wrd`` is
:func:`dld_brain.data.text.normalize_tedlium` of the text.

Rules (all counted in the per-split log line):

* ``ignore_time_segment_in_scoring`` segments are dropped, and so are segments with no words left
  after normalisation (empty text, only ``<unk>``/noise markup) or shorter than one sample;
* a segment with the same start and end as one already kept is a duplicate and is dropped (warning);
* overlapping segments are all kept, each as its own utterance with its own transcript (the stm says
  both spans hold those words); they are counted and the first few named in a warning;
* a segment ending at most ``END_TOLERANCE_S`` (0.5 s) after the audio is clipped to the audio end
  (stm times are rounded, and the last segment often overruns by a few ms); one ending later, starting
  at/after the end, or ending before it starts (negative times too) has times that cannot be right: it is
  skipped, counted in the log line and named (``file:line``) in a warning, so one bad line among 268k does
  not stop a preparation;
* a malformed stm line (fewer than 6 fields, non-numeric times, no ``<...>`` label), a missing, corrupt
  or compressed .sph, and a missing split folder are errors that name the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import soundfile

from dld_brain.data.manifest import DataPrepError, PrepMarker, root_relative, write_manifest
from dld_brain.data.text import TEDLIUM_IGNORE, normalize_tedlium

logger = logging.getLogger(__name__)

IGNORE = TEDLIUM_IGNORE
END_TOLERANCE_S = 0.5
TEDLIUM_FIELDS = ("ID", "duration", "wav", "start", "stop", "spk_id", "wrd")
_LISTED = 3


class StmSegment(NamedTuple):
    """One stm line."""

    talk: str
    channel: str
    speaker: str
    start: float
    end: float
    label: str
    text: str
    line: int


def parse_stm(path: str | os.PathLike) -> Iterator[StmSegment]:
    """Segments of an stm file in file order; DataPrepError with file:line for a malformed line (times that
    are numbers but impossible, e.g. an end before the start, are the caller's to judge)."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith(";;"):
                continue
            where = f"{path}:{number}"
            fields = line.split(None, 6)
            if len(fields) < 6:
                raise DataPrepError(f"{where}: malformed stm line {line[:70]!r} ({len(fields)} fields); "
                                    "expected '<talk> <channel> <speaker> <start> <end> <label> <text>'")
            try:
                start, end = float(fields[3]), float(fields[4])
            except ValueError:
                raise DataPrepError(f"{where}: malformed stm line, start/end are not numbers: "
                                    f"{fields[3]!r} {fields[4]!r}") from None
            if not (fields[5].startswith("<") and fields[5].endswith(">")):
                raise DataPrepError(f"{where}: malformed stm line, 6th field {fields[5]!r} is not a label like "
                                    "<o,f0,male>")
            yield StmSegment(fields[0], fields[1], fields[2], start, end, fields[5],
                             fields[6] if len(fields) == 7 else "", number)


def sph_info(sph: Path, stm: Path) -> tuple[int, int]:
    """``(sample_rate, frames)`` of a talk's audio; DataPrepError naming it if missing or unreadable."""
    if not sph.is_file():
        hint = " (a dangling symlink: extract the archive with its links)" if sph.is_symlink() else ""
        raise DataPrepError(f"audio for {stm} not found: {sph}{hint}. Restore it from the TED-LIUM 3 archive.")
    try:
        info = soundfile.info(str(sph))
    except Exception as err:  # soundfile raises several types for broken files
        with open(sph, "rb") as handle:
            shorten = b"shorten" in handle.read(1024)
        fix = ("it is shorten-compressed: convert it with 'sph2pipe -f sph'" if shorten else
               "re-extract it from the TED-LIUM 3 archive")
        raise DataPrepError(f"unreadable audio {sph}: {err}; {fix}") from err
    if info.frames <= 0:
        raise DataPrepError(f"audio {sph} has no samples; re-extract it from the TED-LIUM 3 archive")
    return info.samplerate, info.frames


def _segment_id(seg: StmSegment, used: set[str]) -> str:
    """Kaldi-style ``<talk>-<start cs>-<end cs>``; the stm line number is appended if that is taken."""
    seg_id = f"{seg.talk}-{round(seg.start * 100):07d}-{round(seg.end * 100):07d}"
    return seg_id if seg_id not in used else f"{seg_id}-L{seg.line}"


def _talk_rows(stm: Path, sph: Path, counts: dict[str, int], notes: dict[str, list[str]],
               data_root: Path) -> list[dict]:
    """Manifest rows of one talk, in time order, applying the module's rules (paths ``$data_root/...``)."""
    rate, total = sph_info(sph, stm)
    rows: list[dict] = []
    kept: set[tuple[int, int]] = set()
    used: set[str] = set()
    last_stop = 0
    for seg in sorted(parse_stm(stm), key=lambda s: (s.start, s.end, s.line)):
        if seg.text.strip() == IGNORE:
            counts["ignored"] += 1
            continue
        if seg.start < 0 or seg.end < seg.start:
            counts["bad_times"] += 1
            notes["bad_times"].append(f"{stm.name}:{seg.line} ({seg.start:.2f}..{seg.end:.2f} s ends before it "
                                      "starts)")
            continue
        words = normalize_tedlium(seg.text)
        start, stop = round(seg.start * rate), round(seg.end * rate)
        if not words or stop <= start:
            counts["empty"] += 1
            continue
        if stop > total:
            if start >= total or (stop - total) / rate > END_TOLERANCE_S:
                counts["bad_times"] += 1
                notes["bad_times"].append(f"{stm.name}:{seg.line} ({seg.start:.2f}..{seg.end:.2f} s runs past "
                                          f"the {total / rate:.2f} s of {sph.name})")
                continue
            stop = total
            counts["clipped"] += 1
            notes["clipped"].append(f"{stm.name}:{seg.line}")
        if (start, stop) in kept:
            counts["duplicate"] += 1
            notes["duplicate"].append(f"{stm.name}:{seg.line}")
            continue
        if start < last_stop:
            counts["overlapping"] += 1
            notes["overlapping"].append(f"{stm.name}:{seg.line}")
        kept.add((start, stop))
        last_stop = max(last_stop, stop)
        seg_id = _segment_id(seg, used)
        used.add(seg_id)
        rows.append({"ID": seg_id, "duration": f"{(stop - start) / rate:.3f}", "wav": root_relative(sph, data_root),
                     "start": start, "stop": stop, "spk_id": seg.speaker, "wrd": words})
    return rows


def _check_split(base: Path, split: str) -> None:
    """DataPrepError naming a missing ``<split>/stm`` or ``<split>/sph`` folder and listing what is there."""
    for folder in (base / split / "stm", base / split / "sph"):
        if not folder.is_dir():
            present = sorted(str(p.relative_to(base)) for p in base.glob("*/*") if p.is_dir())
            raise DataPrepError(f"TED-LIUM 3 folder missing: {folder} (found {present or 'nothing'} under "
                                f"{base}). Extract the release completely or remove {split!r} from the splits.")


def _split_rows(base: Path, split: str, max_segments: Optional[int], data_root: Path) -> list[dict]:
    """Rows of one split (talks in name order); logs what the rules dropped, kept and clipped."""
    stm_dir, sph_dir = base / split / "stm", base / split / "sph"
    counts = dict.fromkeys(("ignored", "empty", "duplicate", "overlapping", "clipped", "bad_times"), 0)
    notes: dict[str, list[str]] = {"duplicate": [], "overlapping": [], "clipped": [], "bad_times": []}
    stms = sorted(stm_dir.glob("*.stm"))
    rows: list[dict] = []
    for stm in stms:
        rows += _talk_rows(stm, sph_dir / f"{stm.stem}.sph", counts, notes, data_root)
        if max_segments is not None and len(rows) >= max_segments:
            rows = rows[:max_segments]
            break
    if not rows:
        raise DataPrepError(f"no usable segments in {stm_dir} ({len(stms)} stm files)")
    unused = len({p.stem for p in sph_dir.glob("*.sph")} - {p.stem for p in stms})
    logger.info("TED-LIUM 3 %s: %d segments, %.2f h from %d talks; dropped %d ignore_time_segment_in_scoring, "
                "%d empty and %d duplicate segments; skipped %d with impossible times; kept %d overlapping; "
                "clipped %d to the audio end; %d .sph without .stm", split, len(rows),
                sum(float(r["duration"]) for r in rows) / 3600, len({r["wav"] for r in rows}), counts["ignored"],
                counts["empty"], counts["duplicate"], counts["bad_times"], counts["overlapping"], counts["clipped"],
                unused)
    for kind, where in notes.items():
        if where:
            label = "skipped (impossible times)" if kind == "bad_times" else kind
            logger.warning("TED-LIUM 3 %s: %d %s segments (%s%s)", split, len(where), label,
                           ", ".join(where[:_LISTED]), ", ..." if len(where) > _LISTED else "")
    return rows


def prepare_tedlium3(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    splits: Sequence[str] = ("train", "dev", "test"),
    release_subdir: str = "legacy",
    max_segments: Optional[int] = None,
) -> dict[str, Path]:
    """Write ``<save_folder>/<split>.csv`` per split (rules in the module docstring). Returns {split: csv}.

    ``data_folder`` is ``TEDLIUM_release-3`` (or its parent); ``max_segments`` keeps the first N segments
    of each split (debugging). Audio paths are ``$data_root/...`` relative to ``data_folder`` (read with
    ``replacements={"data_root": data_folder}``), so the release and the manifests can move together.
    Idempotent: a rerun with the same options whose manifests exist does nothing (wherever the release is).
    """
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    base = data_folder / release_subdir
    if not base.is_dir() and (data_folder / "TEDLIUM_release-3" / release_subdir).is_dir():
        base = data_folder / "TEDLIUM_release-3" / release_subdir
    if not base.is_dir():
        raise DataPrepError(f"TED-LIUM 3 folder not found: {base}. Pass --data_folder=<TEDLIUM_release-3> "
                            "(download from openslr.org/51)")
    outputs = {s: save_folder / f"{s}.csv" for s in splits}
    marker = PrepMarker(save_folder, "tedlium3", dict(base=base.relative_to(data_folder).as_posix(),
                                                      splits=list(splits), n=max_segments, rules=3))
    if marker.done(list(outputs.values())):
        logger.info("TED-LIUM 3 manifests in %s are up to date; skipping preparation", save_folder)
        return outputs
    for split in splits:
        _check_split(base, split)
    for split in splits:
        write_manifest(outputs[split], _split_rows(base, split, max_segments, data_folder), TEDLIUM_FIELDS)
    marker.mark()
    return outputs
