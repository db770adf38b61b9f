"""Dataset pipelines shared by the ASR recipes: audio reading (segments, resampling, stereo folding),
tokenisation with SentencePiece, and the train/valid/test datasets built from CSV manifests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import speechbrain as sb
import torch
import torchaudio
from speechbrain.dataio.dataio import read_audio
from speechbrain.tokenizers.SentencePiece import SentencePiece

from dld_brain.data.manifest import DataPrepError, read_manifest
from dld_brain.validation import check_rows, report_problems

logger = logging.getLogger(__name__)


class AudioError(RuntimeError):
    """An audio file that cannot be used; the message names the file and the reason."""


def load_audio(
    wav: str, sample_rate: int, start: Optional[int] = None, stop: Optional[int] = None
) -> torch.Tensor:
    """Read a mono waveform at ``sample_rate``: stereo is averaged, other rates are resampled.

    ``start``/``stop`` (samples, file rate) read a segment. Raises AudioError naming the file.
    """
    import soundfile

    try:
        info = soundfile.info(wav)
        if start is not None and stop is not None and stop > start:
            sig = read_audio({"file": wav, "start": int(start), "stop": int(stop)})
        else:
            sig = read_audio(wav)
    except Exception as err:
        raise AudioError(f"cannot read audio {wav}: {err}") from err
    if sig.dim() == 2:  # (time, channels)
        sig = sig.mean(dim=1)
    if sig.numel() == 0:
        raise AudioError(f"audio {wav} is empty (0 samples)")
    if info.samplerate != sample_rate:
        sig = torchaudio.functional.resample(sig, info.samplerate, sample_rate)
    return sig


def train_tokenizer(
    model_dir: str, train_csv: str, vocab_size: int, model_type: str = "unigram"
) -> SentencePiece:
    """Train (or reload, if ``model_dir`` holds it) a SentencePiece model on the ``wrd`` column."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    return SentencePiece(
        model_dir=model_dir,
        vocab_size=vocab_size,
        annotation_train=train_csv,
        annotation_read="wrd",
        model_type=model_type,
        character_coverage=1.0,
        annotation_format="csv",
    )


def make_asr_datasets(hparams: dict, tokenizer) -> dict[str, sb.dataio.dataset.DynamicItemDataset]:
    """Build {"train", "valid", <test names>} datasets with ``sig`` and ``tokens`` items.

    Reads ``train_csv``, ``valid_csv`` and ``test_csvs`` ({name: path}); rows with bad audio or text are
    handled by the rules of :mod:`dld_brain.validation` (``check_audio``, ``min_duration_s``,
    ``on_bad_data``); sorts training data by duration (``sorting``: ascending/descending/random) and drops
    utterances longer than ``max_duration_s``.
    """
    sample_rate = hparams["sample_rate"]
    sp = tokenizer.sp if hasattr(tokenizer, "sp") else tokenizer

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return load_audio(wav, sample_rate, _as_int(start), _as_int(stop))

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        yield wrd
        yield torch.LongTensor(sp.encode_as_ids(wrd))

    def load(name: str, csv_path: str):
        rows = read_manifest(csv_path)  # clear error when missing/empty/malformed
        kept, problems = check_rows(rows, sp, level=hparams.get("check_audio", "header"),
                                    min_duration_s=float(hparams.get("min_duration_s", 0.1)))
        report_problems(name, csv_path, len(rows), problems, hparams.get("output_folder"),
                        hparams.get("on_bad_data", "skip"))
        if not kept:
            raise DataPrepError(f"no usable rows left in {csv_path} (see skipped_{name}.txt)")
        data = {row["ID"]: {k: v for k, v in row.items() if k != "ID"} for row in kept}
        for row in data.values():
            row.setdefault("start", "")
            row.setdefault("stop", "")
            try:
                row["duration"] = float(row["duration"])
            except ValueError:
                raise DataPrepError(f"{csv_path}: non-numeric duration {row['duration']!r}") from None
        ds = sb.dataio.dataset.DynamicItemDataset(data, dynamic_items=[audio_pipeline, text_pipeline],
                                                  output_keys=["id", "sig", "wrd", "tokens", "duration"])
        return ds

    datasets = {"train": load("train", hparams["train_csv"]), "valid": load("valid", hparams["valid_csv"])}
    sorting = hparams.get("sorting", "ascending")
    max_dur = hparams.get("max_duration_s")
    key_max = {"duration": max_dur} if max_dur else {}
    if sorting in ("ascending", "descending"):
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=sorting == "descending", key_max_value=key_max)
        hparams.setdefault("train_dataloader_opts", {})["shuffle"] = False
    elif key_max:
        datasets["train"] = datasets["train"].filtered_sorted(key_max_value=key_max)
    datasets["valid"] = datasets["valid"].filtered_sorted(sort_key="duration")
    for name, path in hparams.get("test_csvs", {}).items():
        datasets[name] = load(name, path).filtered_sorted(sort_key="duration")
    return datasets


def _as_int(value) -> Optional[int]:
    if value in (None, ""):
        return None
    return int(float(value))
