"""The shared body of every intent-classification (SLU) recipe's ``train.py``: parse, prepare, label
encoder, train, depth sweep of the accuracy.

A recipe only supplies its data preparation function, which writes manifests with the columns
``ID, duration, wav, spk_id, wrd, intent`` (see :mod:`dld_brain.data.fsc`); the rest is here and in
:mod:`dld_brain.recipe` (experiment setup, depth checks, ``fit_and_sweep``, ``main_guard``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from dld_brain.data.fsc import check_known_labels
from dld_brain.data.manifest import DataPrepError, read_manifest
from dld_brain.dataio import _as_int, load_audio
from dld_brain.export import write_inference_bundle
from dld_brain.hparams import HparamsError
from dld_brain.recipe import check_depth_options, evaluation_tag, fit_and_sweep, setup_experiment
from dld_brain.slu_brain import DynamicDepthClassifierBrain
from dld_brain.validation import audio_problem, report_problems

logger = get_logger(__name__)  # SpeechBrain's: logs on the main process only

LABEL_KEY = "intent"
SLU_REQUIRED = ("ID", "duration", "wav", LABEL_KEY)


def training_labels(train_csv: str | Path) -> list[str]:
    """The sorted distinct labels of the training manifest (the label encoder's classes, in index order)."""
    rows = read_manifest(train_csv, SLU_REQUIRED)
    empty = [r["ID"] for r in rows if not (r[LABEL_KEY] or "").strip()]
    if empty:
        raise DataPrepError(f"{train_csv}: utterances without {LABEL_KEY}: {empty[:5]}")
    return sorted({r[LABEL_KEY] for r in rows})


def _write_label_encoder(train_csv: str, path: str) -> None:
    """Build the encoder on the training labels (sorted, so every run of a prep gets the same indices) and
    save it; an existing file with other labels is replaced with a warning (models trained on it are stale)."""
    labels = training_labels(train_csv)
    path = Path(path)
    if path.is_file():
        old = CategoricalEncoder()
        try:
            old.load(path)
            if [old.ind2lab[i] for i in range(len(old))] == labels:
                return
        except Exception:  # unreadable: rewrite it
            pass
        logger.warning("Label encoder %s does not match the training labels of %s: rewritten (models trained "
                       "with the old one are incompatible)", path, train_csv)
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder.save(path)


def build_label_encoder(hparams: dict) -> CategoricalEncoder:
    """The label encoder of the training set, saved at ``label_encoder_file`` (main process) and loaded;
    HparamsError when its size differs from ``num_classes``."""
    kwargs = {"train_csv": hparams["train_csv"], "path": hparams["label_encoder_file"]}
    run_on_main(_write_label_encoder, kwargs=kwargs)
    encoder = CategoricalEncoder()
    encoder.load(hparams["label_encoder_file"])
    encoder.expect_len(len(encoder))
    if len(encoder) != int(hparams["num_classes"]):
        raise HparamsError(
            f"the training set ({hparams['train_csv']}) has {len(encoder)} {LABEL_KEY} labels but num_classes is "
            f"{hparams['num_classes']}: set num_classes: {len(encoder)}")
    return encoder


def make_slu_datasets(hparams: dict, label_encoder: CategoricalEncoder) -> dict:
    """Build {"train", "valid", <test names>} datasets with ``sig``, ``intent`` and ``intent_encoded`` items.

    A valid/test label unknown to the encoder raises :class:`dld_brain.data.fsc.UnknownLabelError` naming
    the label and the manifest; rows with bad audio follow ``check_audio`` / ``min_duration_s`` /
    ``on_bad_data`` (see :mod:`dld_brain.validation`). Training data order follows ``sorting``
    (``random`` = reshuffled every epoch).
    """
    sample_rate = hparams["sample_rate"]
    known = set(label_encoder.lab2ind)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, stop):
        return load_audio(wav, sample_rate, _as_int(start), _as_int(stop))

    @sb.utils.data_pipeline.takes(LABEL_KEY)
    @sb.utils.data_pipeline.provides(LABEL_KEY, "intent_encoded")
    def label_pipeline(label):
        yield label
        yield torch.LongTensor([label_encoder.encode_label(label)])

    def load(name: str, csv_path: str):
        rows = read_manifest(csv_path, SLU_REQUIRED, replacements={"data_root": hparams["data_folder"]})
        check_known_labels(known, rows, csv_path, LABEL_KEY)
        level = hparams.get("check_audio", "header")
        min_dur = float(hparams.get("min_duration_s", 0.1))
        problems, kept = [], []
        for row in rows:
            reason = audio_problem(row["wav"], min_dur, 1e-4, level, _as_int(row.get("start")),
                                   _as_int(row.get("stop")))
            if reason:
                problems.append((row["ID"], row["wav"], reason))
            else:
                kept.append(row)
        report_problems(name, csv_path, len(rows), problems, hparams.get("output_folder"),
                        hparams.get("on_bad_data", "skip"))
        if not kept:
            raise DataPrepError(f"no usable rows left in {csv_path} (see skipped_{name}.txt)")
        data = {}
        for row in kept:
            item = {k: v for k, v in row.items() if k != "ID"}
            item.setdefault("start", "")
            item.setdefault("stop", "")
            try:
                item["duration"] = float(item["duration"])
            except ValueError:
                raise DataPrepError(f"{csv_path}: non-numeric duration {item['duration']!r}") from None
            data[row["ID"]] = item
        return sb.dataio.dataset.DynamicItemDataset(
            data, dynamic_items=[audio_pipeline, label_pipeline],
            output_keys=["id", "sig", LABEL_KEY, "intent_encoded", "duration"])

    datasets = {"train": load("train", hparams["train_csv"]), "valid": load("valid", hparams["valid_csv"])}
    sorting = hparams.get("sorting", "ascending")
    max_dur = hparams.get("max_duration_s")
    key_max = {"duration": max_dur} if max_dur else {}
    opts = hparams.setdefault("train_dataloader_opts", {})
    if sorting in ("ascending", "descending"):
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=sorting == "descending", key_max_value=key_max)
        opts["shuffle"] = False
    else:
        if key_max:
            datasets["train"] = datasets["train"].filtered_sorted(key_max_value=key_max)
        opts["shuffle"] = True  # SpeechBrain's ReproducibleRandomSampler: a new order every epoch
    datasets["valid"] = datasets["valid"].filtered_sorted(sort_key="duration")
    for name, path in hparams.get("test_csvs", {}).items():
        datasets[name] = load(name, path).filtered_sorted(sort_key="duration")
    return datasets


def run_slu_recipe(argv: Sequence[str], prepare: Callable[[dict], object]) -> Optional[DynamicDepthClassifierBrain]:
    """Run one method (teacher / RD / DLD, chosen by the hparams) end to end; ``prepare(hparams)`` writes the
    manifests named by the hparams.

    Steps: depth-option checks, data preparation (main process), label encoder, training (unless
    ``skip_training``), and the depth sweep of the accuracy on every test set: ``depth_sweep_<set>.csv/.md``
    and ``accuracy_<set>_n<k>.txt`` (class-wise accuracy, confusions, per-utterance predictions), then the
    inference bundle ``<output_folder>/inference/`` (load with ``dld_brain.inference.DynamicDepthClassifier``).
    """
    hparams, run_opts, _ = setup_experiment(argv)
    check_depth_options(hparams)  # before any data preparation or training
    run_on_main(prepare, kwargs={"hparams": hparams})
    label_encoder = build_label_encoder(hparams)
    hparams["label_encoder"] = label_encoder
    datasets = make_slu_datasets(hparams, label_encoder)
    brain = DynamicDepthClassifierBrain(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts=run_opts, checkpointer=hparams["checkpointer"],
    )
    brain.label_encoder = label_encoder
    brain.calibration_set = datasets["train"]  # pool-norm recalibration before each validation
    # The checkpoints carry meta "accuracy" (and "WER" = error rate): the best one is the most accurate.
    fit_and_sweep(brain, datasets, hparams, metric="accuracy", max_key="accuracy")
    brain.calibrate_pool_norms()  # every depth's statistics for the evaluated weights, as the bundle serves them
    if sb.utils.distributed.if_main_process():  # the evaluated weights, ready for dld_brain.inference
        bundle = write_inference_bundle(hparams, {"model": brain.model, "normalize": brain.modules.normalize},
                                        hparams["label_encoder_file"],
                                        Path(hparams["output_folder"]) / f"inference{evaluation_tag(hparams)}")
        logger.info("Inference bundle: %s (load with dld_brain.inference.DynamicDepthClassifier)", bundle)
    return brain
