"""LibriSpeech preparation from the real corpus layout into SpeechBrain CSV manifests.

Layout: ``LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with one
``<spk>-<chapter>.trans.txt`` per chapter whose lines are ``<spk>-<chapter>-<utt> TRANSCRIPT``.

Rules for inconsistent data, chosen by ``on_missing``:

* a transcript line whose flac is missing, a flac with no transcript line (looked up in its own
  chapter folder), and a flac that soundfile cannot open (corrupt or not FLAC) make the utterance
  unusable. ``"error"`` (default) raises DataPrepError listing up to 10 offenders and the counts;
  ``"skip"`` leaves them out and logs a warning with the counts. Never a silent wrong manifest.
* a malformed transcript line (no text, an ID that is not ``<spk>-<chapter>-<utt>`` of its chapter, or
  an ID given twice) is always an error naming ``file:line``: the transcript itself is wrong.
* a missing split folder is an error naming it and listing the folders that are there.

The audio check reads the file header (duration from ``soundfile.info``), not every sample, in parallel
worker processes with a progress bar (:func:`read_headers`); a file cut short inside its FLAC frames is
caught when the recipe's ``check_audio=full`` decodes it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from dld_brain.data.manifest import (DataPrepError, PrepMarker, audio_info, merge_manifests, root_relative,
                                     write_manifest)
from dld_brain.data.text import normalize_transcript

logger = logging.getLogger(__name__)

ALL_SPLITS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
              "test-clean", "test-other")
ON_MISSING = ("error", "skip")
_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_MAX_LISTED = 10
PARALLEL_FROM = 500  # files; fewer are read in the calling process


class Utterance(NamedTuple):
    """One transcript line and where it came from."""

    utt: str
    text: str
    trans_file: Path
    line: int


def read_transcripts(trans_file: Path) -> list[Utterance]:
    """Lines of one ``<spk>-<chapter>.trans.txt``; DataPrepError with file:line for a malformed line."""
    chapter_dir = trans_file.parent
    prefix = f"{chapter_dir.parent.name}-{chapter_dir.name}-"
    out: list[Utterance] = []
    seen: dict[str, int] = {}
    with open(trans_file, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line:
                continue
            utt, _, text = line.partition(" ")
            where = f"{trans_file}:{number}"
            if not _UTT_ID.match(utt) or not text.strip():
                raise DataPrepError(f"{where}: malformed line {line[:60]!r}; expected "
                                    "'<spk>-<chapter>-<utt> TRANSCRIPT'. Fix or restore the file.")
            if not utt.startswith(prefix):
                raise DataPrepError(f"{where}: utterance {utt} does not belong to chapter folder {chapter_dir} "
                                    f"(IDs there start with {prefix}). Restore the file from the archive.")
            if utt in seen:
                raise DataPrepError(f"{where}: utterance {utt} already given on line {seen[utt]}")
            seen[utt] = number
            out.append(Utterance(utt, text.strip(), trans_file, number))
    return out


def _report(split_dir: Path, problems: dict[str, list[str]], on_missing: str) -> None:
    """Raise (``on_missing="error"``) or log (``"skip"``) the unusable utterances of a split."""
    total = sum(len(v) for v in problems.values())
    if not total:
        return
    counts = ", ".join(f"{len(v)} {kind}" for kind, v in problems.items() if v)
    listed = [item for v in problems.values() for item in v][:_MAX_LISTED]
    message = f"{split_dir}: {counts}: " + "; ".join(listed) + (" ..." if total > _MAX_LISTED else "")
    if on_missing == "error":
        raise DataPrepError(f"{message}. Restore the files from the LibriSpeech archive, or prepare with "
                            "on_missing='skip' to leave these utterances out.")
    logger.warning("LibriSpeech: skipped %d unusable utterances. %s", total, message)


def flac_header(flac: Path) -> tuple[Optional[float], Optional[str]]:
    """``(duration_s, None)`` of a readable audio file, or ``(None, why it is unreadable)`` (picklable, for
    the worker processes of :func:`read_headers`)."""
    try:
        duration, _, _ = audio_info(flac)
    except DataPrepError as err:
        cause = err.__cause__  # libsndfile's reason, or audio_info's own ("Empty audio file (0 samples)")
        reason = (getattr(cause, "error_string", None) or str(cause)) if cause else str(err).split(": ")[0]
        return None, reason.rstrip(".")
    return duration, None


def read_headers(files: Sequence[Path], process_count: Optional[int] = None
                 ) -> list[tuple[Optional[float], Optional[str]]]:
    """:func:`flac_header` of every file, in order, read in parallel with a progress bar (SpeechBrain's
    ``parallel_map``, as SpeechBrain's own LibriSpeech preparation does; ``SB_NUM_PROC`` caps the processes).
    A few hundred files, or one available CPU (``SB_NUM_PROC=1``), are read in this process, where a pool
    costs more than it saves."""
    from speechbrain.utils.parallel import get_available_cpu_count, parallel_map

    if process_count is None:
        process_count = 1 if len(files) < PARALLEL_FROM else get_available_cpu_count()
    if process_count == 1:
        from tqdm import tqdm

        return [flac_header(f) for f in tqdm(files, desc="LibriSpeech headers", disable=len(files) < PARALLEL_FROM)]

    return list(parallel_map(flac_header, files, process_count=process_count, chunk_size=64,
                             progress_bar_kwargs={"desc": "LibriSpeech headers", "smoothing": 0.02}))


def _split_rows(split_dir: Path, on_missing: str, limit: Optional[int], data_root: Path) -> list[dict]:
    """Manifest rows of one split, sorted by ID, applying the ``on_missing`` rule; paths relative to
    ``data_root`` (``$data_root/...``)."""
    problems: dict[str, list[str]] = {"transcript lines without audio": [], "flac files without transcript": [],
                                      "unreadable flac files": []}
    usable: list[tuple[Utterance, Path]] = []
    for chapter_dir in sorted(p for p in split_dir.glob("*/*") if p.is_dir()):
        lines = [u for t in sorted(chapter_dir.glob("*.trans.txt")) for u in read_transcripts(t)]
        flacs = {p.stem: p for p in chapter_dir.glob("*.flac")}
        for u in lines:
            if u.utt in flacs:
                usable.append((u, flacs.pop(u.utt)))
            else:
                problems["transcript lines without audio"].append(
                    f"{u.trans_file.relative_to(split_dir)}:{u.line} {u.utt} has no {u.utt}.flac")
        problems["flac files without transcript"] += [f"{p.relative_to(split_dir)} has no transcript line"
                                                      for p in sorted(flacs.values())]
    usable.sort(key=lambda item: item[0].utt)
    if limit is not None:
        usable = usable[:limit]  # select_n_sentences: the first N by ID (their headers only are read)
    rows = []
    for (u, flac), (duration, reason) in zip(usable, read_headers([flac for _, flac in usable])):
        if reason is not None:
            problems["unreadable flac files"].append(f"{flac.relative_to(split_dir)} is unreadable ({reason})")
            continue
        rows.append({"ID": u.utt, "duration": f"{duration:.3f}", "wav": root_relative(flac, data_root),
                     "spk_id": u.utt.split("-")[0], "wrd": normalize_transcript(u.text)})
    _report(split_dir, problems, on_missing)
    return rows


def _corpus_root(data_folder: Path, splits: Sequence[str]) -> Path:
    """``data_folder`` or its ``LibriSpeech/`` subfolder, whichever holds the splits."""
    for root in (data_folder, data_folder / "LibriSpeech"):
        if any((root / s).is_dir() for s in splits):
            return root
    return data_folder / "LibriSpeech" if (data_folder / "LibriSpeech").is_dir() else data_folder


def prepare_librispeech(
    data_folder: str | os.PathLike,
    save_folder: str | os.PathLike,
    tr_splits: Sequence[str] = ("train-clean-100", "train-clean-360", "train-other-500"),
    dev_splits: Sequence[str] = ("dev-clean", "dev-other"),
    te_splits: Sequence[str] = ("test-clean", "test-other"),
    select_n_sentences: Optional[int] = None,
    merge_train_name: str = "train",
    on_missing: str = "error",
) -> dict[str, Path]:
    """Write ``<save_folder>/<split>.csv`` per split and ``<merge_train_name>.csv`` (all tr_splits).

    ``data_folder`` is the ``LibriSpeech`` folder or its parent. ``select_n_sentences`` keeps the first
    N utterances (by ID) of each split, for debugging. Audio paths are ``$data_root/...`` relative to
    ``data_folder`` (read with ``replacements={"data_root": data_folder}``), so the corpus and the manifests
    can move together. Idempotent: a rerun with the same options whose manifests still exist does nothing
    (wherever the corpus now is). Returns ``{split or merge_train_name: csv path}``.
    """
    if on_missing not in ON_MISSING:
        raise DataPrepError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    splits = list(dict.fromkeys([*tr_splits, *dev_splits, *te_splits]))
    if tr_splits and merge_train_name in splits:
        raise DataPrepError(f"merge_train_name {merge_train_name!r} is also a split name; choose another")
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    if not data_folder.is_dir():
        raise DataPrepError(f"LibriSpeech folder not found: {data_folder}. Pass --data_folder=<the folder "
                            "holding train-clean-100/, dev-clean/, ...> (download from openslr.org/12)")
    root = _corpus_root(data_folder, splits)
    outputs = {s: save_folder / f"{s}.csv" for s in splits}
    if tr_splits:
        outputs[merge_train_name] = save_folder / f"{merge_train_name}.csv"
    marker = PrepMarker(save_folder, "librispeech", dict(
        root=root.relative_to(data_folder).as_posix(), tr=list(tr_splits), dev=list(dev_splits), te=list(te_splits),
        n=select_n_sentences, merge=merge_train_name, on_missing=on_missing))
    if marker.done(list(outputs.values())):
        logger.info("LibriSpeech manifests in %s are up to date; skipping preparation", save_folder)
        return outputs
    for split in splits:
        _check_split_dir(root, split)
    for split in splits:
        rows = _split_rows(root / split, on_missing, select_n_sentences, data_folder)
        if not rows:
            raise DataPrepError(f"no usable utterances in {root / split}")
        write_manifest(outputs[split], rows)
        logger.info("LibriSpeech %s: %d utterances, %.2f h", split, len(rows),
                    sum(float(r["duration"]) for r in rows) / 3600)
    if tr_splits:
        merge_manifests([outputs[s] for s in tr_splits], outputs[merge_train_name])
    marker.mark()
    return outputs


def _check_split_dir(root: Path, split: str) -> None:
    """DataPrepError naming a missing split folder and listing what is there instead."""
    if (root / split).is_dir():
        return
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise DataPrepError(f"LibriSpeech split folder missing: {root / split} (found {present or 'nothing'}). "
                        "Download and extract that split, or remove it from the split lists.")
