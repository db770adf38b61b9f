#!/usr/bin/env python3
"""Connected-digit ASR on the Free Spoken Digit Dataset: static teacher, RDsc, RDLD or DLD.

Usage: python recipes/FSDD/train.py hparams/fsdd/dld.yaml [--data_folder=DIR] [--device=cpu] [--fold=K]
The method is chosen by the hparams file; see hparams/fsdd/base.yaml for every key. ``--fold=K`` (0-based,
of ``--num_folds``) uses rotating speaker folds whose validation and test speakers differ.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from dld_brain.data.fsdd import prepare_fsdd, speaker_fold  # noqa: E402
from dld_brain.recipe import main_guard, run_asr_recipe  # noqa: E402


def prepare(hparams: dict) -> None:
    """Write train/valid/test manifests of synthetic digit strings (see dld_brain.data.fsdd)."""
    speakers = {}
    if hparams.get("fold") is not None:
        train, valid, test = speaker_fold(int(hparams["fold"]), int(hparams["num_folds"]))
        speakers = dict(train_speakers=train, valid_speakers=valid, heldout_speakers=test)
    prepare_fsdd(
        hparams["data_folder"], hparams["prep_folder"],
        fallback_folders=hparams["fallback_data_folders"], download=hparams["download"],
        seed=hparams["data_seed"], train_copies=hparams["train_copies"],
        takes_per_digit=hparams["takes_per_digit"], sample_rate=hparams["sample_rate"], **speakers,
    )


if __name__ == "__main__":
    main_guard(lambda: run_asr_recipe(sys.argv[1:], prepare))
