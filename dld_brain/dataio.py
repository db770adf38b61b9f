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
from speechbrain.utils.distributed import run_on_main

from dld_brain.data.manifest import DataPrepError, read_manifest
from dld_brain.validation import cached_audio_problems, check_rows, report_problems, split_test_rows

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

    Reads ``train_csv``, ``valid_csv`` and ``test_csvs`` ({name: path}), ``$data_root`` in their paths
    replaced by ``data_folder`` (or ``data_roots[name]``), as ``DynamicItemDataset.from_csv`` does. Audio
    checks (``check_audio``, ``min_duration_s``) run once per manifest on the main process and are cached
    beside it (:func:`dld_brain.validation.cached_audio_problems`). Training and validation rows with bad audio or
    text follow ``on_bad_data``; test rows are never dropped (:func:`dld_brain.validation.split_test_rows`):
    references with units the tokenizer lacks are scored (their words count as errors) and rows whose audio
    cannot be read are scored as empty hypotheses; both are counted, logged and attached to the dataset
    (``outside_tokenizer``, ``unreadable_refs``) for the depth sweep. Sorts training data by duration
    (``sorting``: ascending/descending/random) and drops utterances longer than ``max_duration_s``.
    """
    sample_rate = hparams["sample_rate"]
    sp = tokenizer.sp if hasattr(tokenizer, "sp") else tokenizer
    unk = sp.unk_id() if sp is not None else None

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return load_audio(wav, sample_rate, _as_int(start), _as_int(stop))

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        yield wrd
        yield torch.LongTensor(sp.encode_as_ids(wrd))

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def test_text_pipeline(wrd):
        """As text_pipeline, without the <unk> ids (unk is the CTC blank); the tokens only feed the test
        loss, the WER is scored on ``wrd``."""
        yield wrd
        yield torch.LongTensor([i for i in sp.encode_as_ids(wrd) if i != unk])

    level = hparams.get("check_audio", "header")
    min_dur = float(hparams.get("min_duration_s", 0.1))
    report_dir = hparams.get("output_folder")

    def data_root(name: str) -> Optional[str]:
        """The folder ``$data_root`` stands for in the manifest of set ``name`` (``data_roots`` overrides
        ``data_folder`` per set, e.g. the TED-LIUM 3 test set of the LibriSpeech recipe)."""
        root = (hparams.get("data_roots") or {}).get(name, hparams.get("data_folder"))
        return str(root) if root else None

    def rows_of(name: str, csv_path: str) -> list:
        """The manifest's rows (clear error when missing/empty/malformed), ``$data_root`` substituted."""
        root = data_root(name)
        return read_manifest(csv_path, replacements={"data_root": root} if root else {})

    def audio_checks(name: str, csv_path: str, rows: list) -> dict:
        """Audio problems of a manifest: checked once on the main process, then read from the cache."""
        kwargs = dict(csv_path=csv_path, rows=rows, level=level, min_duration_s=min_dur,
                      data_root=data_root(name))
        run_on_main(cached_audio_problems, kwargs=kwargs)
        return cached_audio_problems(**kwargs)

    def dataset(csv_path: str, kept: list, text_item):
        data = {row["ID"]: {k: v for k, v in row.items() if k != "ID"} for row in kept}
        for row in data.values():
            row.setdefault("start", "")
            row.setdefault("stop", "")
            try:
                row["duration"] = float(row["duration"])
            except ValueError:
                raise DataPrepError(f"{csv_path}: non-numeric duration {row['duration']!r}") from None
        return sb.dataio.dataset.DynamicItemDataset(data, dynamic_items=[audio_pipeline, text_item],
                                                    output_keys=["id", "sig", "wrd", "tokens", "duration"])

    def load(name: str, csv_path: str):
        rows = rows_of(name, csv_path)
        kept, problems = check_rows(rows, sp, level=level, min_duration_s=min_dur,
                                    audio_problems=audio_checks(name, csv_path, rows))
        report_problems(name, csv_path, len(rows), problems, report_dir, hparams.get("on_bad_data", "skip"))
        if not kept:
            raise DataPrepError(f"no usable rows left in {csv_path} (see skipped_{name}.txt)")
        return dataset(csv_path, kept, text_pipeline)

    def load_test(name: str, csv_path: str):
        rows = rows_of(name, csv_path)
        scored, outside, unreadable = split_test_rows(rows, sp, audio_checks(name, csv_path, rows))
        bad_audio = [item for item in unreadable if item[2] != "empty transcript"]
        if bad_audio and hparams.get("on_bad_data", "skip") == "error":
            report_problems(name, csv_path, len(rows), bad_audio, report_dir, "error")
        report_test_rows(name, csv_path, len(rows), outside, unreadable, report_dir)
        if not scored:
            raise DataPrepError(f"no test row of {csv_path} has readable audio (see unreadable_{name}.txt)")
        ds = dataset(csv_path, scored, test_text_pipeline).filtered_sorted(sort_key="duration")
        wrd = {row["ID"]: row.get("wrd", "") for row in rows}
        ds.outside_tokenizer = outside
        ds.unreadable_refs = [(utt, wrd[utt], reason) for utt, _, reason in unreadable if wrd[utt].strip()]
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
        datasets[name] = load_test(name, path)
    return datasets


def report_test_rows(name: str, source: str, total: int, outside: list, unreadable: list,
                     report_dir: Optional[str]) -> None:
    """Log how every reference of a test set is scored; list the special ones in ``<report_dir>/``
    ``outside_tokenizer_<name>.txt`` (references with units the tokenizer lacks) and
    ``unreadable_<name>.txt`` (rows scored as empty hypotheses, or ignored for an empty reference)."""
    empty = sum(1 for *_, reason in unreadable if reason == "empty transcript")
    logger.info("Test set %s (%s): %d of %d references scored; %d hold units the tokenizer cannot output "
                "(scored, those words count as errors); %d with unreadable audio scored as empty hypotheses; "
                "%d empty references ignored", name, source, total - empty, total, len(outside),
                len(unreadable) - empty, empty)
    if report_dir is None or not sb.utils.distributed.if_main_process():
        return
    for kind, items, header in (("outside_tokenizer", outside, "ID\twrd\treason"),
                                ("unreadable", unreadable, "ID\twav\treason")):
        path = Path(report_dir) / f"{kind}_{name}.txt"
        if items:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + "\n" + "\n".join("\t".join(item) for item in items) + "\n")
        elif path.exists():
            path.unlink()
    if outside:
        logger.warning("Test set %s: %d of %d references hold units the tokenizer cannot output, e.g. %s; "
                       "they are scored as they are (list in %s)", name, len(outside), total,
                       "; ".join(f"{i}: {r}" for i, _, r in outside[:3]),
                       Path(report_dir) / f"outside_tokenizer_{name}.txt")


def _as_int(value) -> Optional[int]:
    if value in (None, ""):
        return None
    return int(float(value))
