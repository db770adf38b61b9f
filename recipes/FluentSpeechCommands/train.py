#!/usr/bin/env python3
"""Fluent Speech Commands: intent classification (31 action_object_location intents) with a static
teacher, RD (random layer dropping from scratch) or DLD, then the accuracy at every depth.

Usage: python recipes/FluentSpeechCommands/train.py hparams/fsc/dld.yaml --data_folder=/path/to/fluent_speech_commands_dataset
The method is chosen by the hparams file; see hparams/fsc/base.yaml for every key. FSC itself is not
downloaded (Fluent.ai distributes it under its own license): point --data_folder at an extracted copy.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from dld_brain.data.fsc import prepare_fsc  # noqa: E402
from dld_brain.recipe import main_guard  # noqa: E402
from dld_brain.slu_recipe import run_slu_recipe  # noqa: E402


def prepare(hparams: dict) -> None:
    """Write train/valid/test manifests from FSC's official split (see dld_brain.data.fsc)."""
    prepare_fsc(hparams["data_folder"], hparams["prep_folder"], fallback_folders=hparams["fallback_data_folders"])


if __name__ == "__main__":
    main_guard(lambda: run_slu_recipe(sys.argv[1:], prepare))
