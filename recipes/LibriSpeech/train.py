#!/usr/bin/env python3
"""LibriSpeech 960 h conformer CTC: static teacher, RDsc, RDLD or DLD, then the depth sweep.

Usage:
  python recipes/LibriSpeech/train.py hparams/dld_conformer.yaml --data_folder=/path/LibriSpeech
  torchrun --nproc_per_node=4 recipes/LibriSpeech/train.py hparams/dld_conformer.yaml --data_folder=...
  # cross-domain: evaluate a trained model on TED-LIUM 3 test at every depth, no retraining
  python recipes/LibriSpeech/train.py hparams/dld_conformer.yaml --data_folder=... \
      --skip_training=True --tedlium_folder=/path/TEDLIUM_release-3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from dld_brain.data.librispeech import prepare_librispeech  # noqa: E402
from dld_brain.data.manifest import merge_manifests  # noqa: E402
from dld_brain.data.tedlium import prepare_tedlium3  # noqa: E402
from dld_brain.recipe import main_guard, run_asr_recipe  # noqa: E402


def prepare(hparams: dict) -> None:
    """LibriSpeech manifests (train.csv = the training splits, dev.csv = dev splits) and, when
    ``tedlium_folder`` is set, the TED-LIUM 3 test manifest as an extra test set."""
    prep = hparams["prep_folder"]
    prepare_librispeech(
        hparams["data_folder"], prep, tr_splits=hparams["train_splits"], dev_splits=hparams["dev_splits"],
        te_splits=hparams["test_splits"], select_n_sentences=hparams["select_n_sentences"],
    )
    merge_manifests([Path(prep) / f"{s}.csv" for s in hparams["dev_splits"]], Path(prep) / "dev.csv")
    if hparams["tedlium_folder"]:
        prepare_tedlium3(hparams["tedlium_folder"], Path(prep) / "tedlium3", splits=("test",))


def add_cross_domain(hparams: dict) -> None:
    """Register TED-LIUM 3 test as a test set (evaluated with the LibriSpeech tokenizer)."""
    if hparams["tedlium_folder"]:
        hparams["test_csvs"]["tedlium3-test"] = str(Path(hparams["prep_folder"]) / "tedlium3" / "test.csv")
        hparams.setdefault("data_roots", {})["tedlium3-test"] = hparams["tedlium_folder"]  # its $data_root


if __name__ == "__main__":
    main_guard(lambda: run_asr_recipe(sys.argv[1:], prepare, configure=add_cross_domain))
