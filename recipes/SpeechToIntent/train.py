#!/usr/bin/env python3
"""Spoken coffee orders (Picovoice Speech-to-Intent, real speech): classify the ordered drink with a
static teacher, RD (random layer dropping from scratch) or DLD, then sweep the accuracy over depths.

Usage: python recipes/SpeechToIntent/train.py hparams/slu/dld.yaml [--data_folder=DIR] [--device=cpu]
The method is chosen by the hparams file; see hparams/slu/base.yaml for every key.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from dld_brain.data.speech_to_intent import prepare_speech_to_intent  # noqa: E402
from dld_brain.recipe import main_guard  # noqa: E402
from dld_brain.slu_recipe import run_slu_recipe  # noqa: E402


def prepare(hparams: dict) -> None:
    """Write train/valid/test manifests of a seeded split stratified by drink (see dld_brain.data.speech_to_intent)."""
    prepare_speech_to_intent(
        hparams["data_folder"], hparams["prep_folder"], seed=hparams["data_seed"],
        valid_frac=hparams["valid_frac"], test_frac=hparams["test_frac"],
        fallback_folders=hparams["fallback_data_folders"], max_per_class=hparams["max_per_class"],
        download=hparams["download"],
    )


if __name__ == "__main__":
    main_guard(lambda: run_slu_recipe(sys.argv[1:], prepare))
