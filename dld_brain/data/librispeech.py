"""LibriSpeech preparation from the real corpus layout into SpeechBrain CSV manifests.

Layout: ``LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` with one
``<spk>-<chapter>.trans.txt`` per chapter whose lines are ``<spk>-<chapter>-<utt> TRANSCRIPT``.
Rules for inconsistent data (``on_missing``): a transcript line without its flac, or a flac without a
transcript line, is an error listing the offenders (default ``"error"``), or is skipped with a logged
count (``"skip"``). A corrupt flac is always an error naming it (the manifest would be wrong otherwise).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from dld_brain.data.manifest import DataPrepError, PrepMarker, audio_info, merge_manifests, write_manifest
from dld_brain.data.text import normalize_transcript

logger = logging.getLogger(__name__)

ALL_SPLITS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
              "test-clean", "test-other")


def _corpus_root(data_folder: Path, splits: Sequence[str]) -> Path:
    """``data_folder`` or its ``LibriSpeech/`` subfolder, whichever holds the splits."""
    for root in (data_folder, data_folder / "LibriSpeech"):
        if any((root / s).is_dir() for s in splits):
            return root
    return data_folder


def read_transcripts(trans_file: Path) -> dict[str, str]:
    """``{utt_id: text}`` of one ``.trans.txt``; DataPrepError with file:line for a malformed line."""
    out = {}
    with open(trans_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            utt, _, text = line.partition(" ")
            if not text.strip() or utt.count("-") != 2:
                raise DataPrepError(f"{trans_file}:{number}: malformed line {line[:60]!r}; expected "
                                    "'<spk>-<chapter>-<utt> TRANSCRIPT'")
            out[utt] = text.strip()
    return out


def _split_rows(split_dir: Path, on_missing: str, limit: Optional[int]) -> list[dict]:
    """Manifest rows of one split (sorted by ID), applying the ``on_missing`` rule."""
    transcripts: dict[str, tuple[str, Path]] = {}
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for utt, text in read_transcripts(trans).items():
            transcripts[utt] = (text, trans)
    flacs = {p.stem: p for p in split_dir.glob("*/*/*.flac")}
    no_audio = sorted(set(transcripts) - set(flacs))
    no_text = sorted(set(flacs) - set(transcripts))
    problems = [f"{u}: transcript in {transcripts[u][1]} but no {u}.flac" for u in no_audio]
    problems += [f"{flacs[u]}: no transcript line" for u in no_text]
    if problems:
        message = f"{split_dir}: {len(no_audio)} transcript lines without audio, {len(no_text)} flac files " \
                  f"without transcript: " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        if on_missing == "error":
            raise DataPrepError(message + ". Restore the files, or prepare with on_missing='skip'.")
        logger.warning("Skipping %d utterances. %s", len(problems), message)
    rows = []
    for utt in sorted(set(transcripts) & set(flacs)):
        if limit is not None and len(rows) >= limit:
            break
        duration, _, _ = audio_info(flacs[utt])  # corrupt audio -> DataPrepError naming the file
        rows.append({"ID": utt, "duration": f"{duration:.3f}", "wav": str(flacs[utt].resolve()),
                     "spk_id": utt.split("-")[0], "wrd": normalize_transcript(transcripts[utt][0])})
    return rows


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
    """Write ``<split>.csv`` for every split and ``<merge_train_name>.csv`` (all training splits).

    Idempotent: skipped when a previous run with the same options finished. Returns {name: csv path}.
    """
    if on_missing not in ("error", "skip"):
        raise DataPrepError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    splits = list(dict.fromkeys([*tr_splits, *dev_splits, *te_splits]))
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    if not data_folder.is_dir():
        raise DataPrepError(f"LibriSpeech folder not found: {data_folder}. Pass --data_folder=<the folder "
                            "holding train-clean-100/, dev-clean/, ...> (download from openslr.org/12)")
    root = _corpus_root(data_folder, splits)
    outputs = {s: save_folder / f"{s}.csv" for s in splits}
    if tr_splits:
        outputs[merge_train_name] = save_folder / f"{merge_train_name}.csv"
    marker = PrepMarker(save_folder, "librispeech", dict(root=str(root.resolve()), splits=splits,
                        tr=list(tr_splits), n=select_n_sentences, on_missing=on_missing))
    if marker.done(list(outputs.values())):
        logger.info("LibriSpeech manifests in %s are up to date; skipping preparation", save_folder)
        return outputs
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise DataPrepError(f"LibriSpeech split folder missing: {split_dir} (found {present}). Download "
                                "and extract it, or remove it from the split lists.")
        rows = _split_rows(split_dir, on_missing, select_n_sentences)
        if not rows:
            raise DataPrepError(f"no utterances found in {split_dir}")
        write_manifest(outputs[split], rows)
        logger.info("LibriSpeech %s: %d utterances, %.1f h", split, len(rows),
                    sum(float(r["duration"]) for r in rows) / 3600)
    if tr_splits:
        merge_manifests([outputs[s] for s in tr_splits], outputs[merge_train_name])
    marker.mark()
    return outputs
