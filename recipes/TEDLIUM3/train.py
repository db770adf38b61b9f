#!/usr/bin/env python3
"""TED-LIUM 3 conformer CTC: static teacher, RDsc, RDLD or DLD, then the depth sweep.

Usage: python recipes/TEDLIUM3/train.py hparams/tedlium3/dld_conformer.yaml --data_folder=/path/TEDLIUM_release-3
To evaluate a LibriSpeech-trained model on TED-LIUM 3 instead, see recipes/LibriSpeech/train.py
(--tedlium_folder).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from dld_brain.data.tedlium import prepare_tedlium3  # noqa: E402
from dld_brain.recipe import main_guard, run_asr_recipe  # noqa: E402


def prepare(hparams: dict) -> None:
    """Segment the talks by their stm times into train/dev/test manifests (see dld_brain.data.tedlium)."""
    prepare_tedlium3(hparams["data_folder"], hparams["prep_folder"], splits=("train", "dev", "test"),
                     release_subdir=hparams["release_subdir"], max_segments=hparams["max_segments"])


if __name__ == "__main__":
    main_guard(lambda: run_asr_recipe(sys.argv[1:], prepare))
