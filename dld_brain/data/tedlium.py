"""TED-LIUM 3 preparation from the real release layout into segment manifests.

Layout: ``TEDLIUM_release-3/<release_subdir>/{train,dev,test}/sph/<talk>.sph`` and ``.../stm/<talk>.stm``
(``legacy`` is the TED-LIUM 2-compatible split used in papers). stm lines are
``<talk> <channel> <speaker> <start_s> <end_s> <label> <text>``. Manifests have the columns
``ID, duration, wav, start, stop, spk_id, wrd`` where ``wav`` is the talk's .sph file and ``start``/``stop``
are sample indices: the training code reads just the segment, no audio is copied.

Rules: ``ignore_time_segment_in_scoring`` segments are dropped, as are segments whose text is empty after
:func:`dld_brain.data.text.normalize_tedlium` (both counted in the log); overlapping segments are kept,
each as its own utterance (TED-LIUM's are consecutive in practice); a segment ending up to 0.5 s after
the audio is clipped to the end, further than that is an error naming the talk and line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import soundfile

from dld_brain.data.manifest import DataPrepError, PrepMarker, write_manifest
from dld_brain.data.text import normalize_tedlium

logger = logging.getLogger(__name__)

IGNORE = "ignore_time_segment_in_scoring"
END_TOLERANCE_S = 0.5
TEDLIUM_FIELDS = ("ID", "duration", "wav", "start", "stop", "spk_id", "wrd")


class StmSegment(NamedTuple):
    """One stm line."""

    talk: str
    speaker: str
    start: float
    end: float
    text: str
    line: int


def parse_stm(path: Path) -> Iterator[StmSegment]:
    """Segments of an stm file; DataPrepError with file:line for a malformed line."""
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith(";;"):
                continue
            fields = line.split(None, 6)
            if len(fields) < 6:
                raise DataPrepError(f"{path}:{number}: malformed stm line {line[:60]!r}; expected "
                                    "'<talk> <channel> <speaker> <start> <end> <label> <text>'")
            try:
                start, end = float(fields[3]), float(fields[4])
            except ValueError:
                raise DataPrepError(f"{path}:{number}: start/end are not numbers in {line[:60]!r}") from None
            if end <= start:
                raise DataPrepError(f"{path}:{number}: segment ends ({end}) before it starts ({start})")
            text = fields[6] if len(fields) == 7 else ""
            yield StmSegment(fields[0], fields[2], start, end, text, number)


def _talk_rows(stm: Path, sph: Path, counts: dict) -> list[dict]:
    """Manifest rows of one talk."""
    if not sph.is_file():
        raise DataPrepError(f"{stm}: audio {sph} is missing")
    try:
        info = soundfile.info(str(sph))
    except Exception as err:
        raise DataPrepError(f"unreadable audio {sph}: {err}") from err
    rate, total = info.samplerate, info.frames
    rows = []
    for seg in parse_stm(stm):
        if seg.text.strip() == IGNORE:
            counts["ignored"] += 1
            continue
        words = normalize_tedlium(seg.text)
        if not words:
            counts["empty"] += 1
            continue
        start, stop = int(round(seg.start * rate)), int(round(seg.end * rate))
        if stop > total:
            if (stop - total) / rate > END_TOLERANCE_S:
                raise DataPrepError(f"{stm}:{seg.line}: segment ends at {seg.end:.2f} s but {sph.name} lasts "
                                    f"{total / rate:.2f} s; fix the stm or the audio")
            stop = total
            counts["clipped"] += 1
        rows.append({"ID": f"{seg.talk}-{int(seg.start * 100):07d}-{int(seg.end * 100):07d}",
                     "duration": f"{(stop - start) / rate:.3f}", "wav": str(sph.resolve()), "start": start,
                     "stop": stop, "spk_id": seg.speaker, "wrd": words})
    return rows


def prepare_tedlium3(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    splits: Sequence[str] = ("train", "dev", "test"),
    release_subdir: str = "legacy",
    max_segments: Optional[int] = None,
) -> dict[str, Path]:
    """Write ``<split>.csv`` per split (see the module docstring); idempotent. Returns {split: csv}."""
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    base = data_folder / release_subdir
    if not base.is_dir():
        raise DataPrepError(f"TED-LIUM 3 folder not found: {base}. Pass --data_folder=<TEDLIUM_release-3> "
                            "(download from openslr.org/51)")
    outputs = {s: save_folder / f"{s}.csv" for s in splits}
    marker = PrepMarker(save_folder, "tedlium3", dict(base=str(base.resolve()), splits=list(splits),
                                                      n=max_segments))
    if marker.done(list(outputs.values())):
        logger.info("TED-LIUM 3 manifests in %s are up to date; skipping preparation", save_folder)
        return outputs
    for split in splits:
        stm_dir, sph_dir = base / split / "stm", base / split / "sph"
        if not stm_dir.is_dir():
            raise DataPrepError(f"TED-LIUM 3 split folder missing: {stm_dir}")
        counts = {"ignored": 0, "empty": 0, "clipped": 0}
        rows: list[dict] = []
        for stm in sorted(stm_dir.glob("*.stm")):
            rows += _talk_rows(stm, sph_dir / f"{stm.stem}.sph", counts)
            if max_segments is not None and len(rows) >= max_segments:
                rows = rows[:max_segments]
                break
        if not rows:
            raise DataPrepError(f"no usable segments in {stm_dir}")
        write_manifest(outputs[split], rows, TEDLIUM_FIELDS)
        logger.info("TED-LIUM 3 %s: %d segments, %.1f h; dropped %d ignore_time_segment_in_scoring and %d "
                    "empty segments; %d clipped to the audio end", split, len(rows),
                    sum(float(r["duration"]) for r in rows) / 3600, counts["ignored"], counts["empty"],
                    counts["clipped"])
    marker.mark()
    return outputs
