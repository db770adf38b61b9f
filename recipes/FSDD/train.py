#!/usr/bin/env python3
"""Connected-digit ASR on the Free Spoken Digit Dataset: static teacher, RDsc, RDLD or DLD.

Usage: python recipes/FSDD/train.py hparams/fsdd/dld.yaml [--data_folder=DIR] [--device=cpu] [--fold=K]
The method is chosen by the hparams file; see hparams/fsdd/base.yaml for every key. ``--fold=K`` (0-based,
of ``--num_folds``) uses rotating speaker folds whose validation and test speakers differ.
``hparams/fsdd/voices.yaml``: 1-7 digit training strings and speaker / channel augmentation (docs/new_voices.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a clone without installing

from dld_brain.data.fsdd import prepare_fsdd, speaker_fold  # noqa: E402
from dld_brain.data.synthetic_channels import write_channel_manifests  # noqa: E402
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
        takes_per_digit=hparams["takes_per_digit"], sample_rate=hparams["sample_rate"],
        train_digits=hparams.get("train_digits"), isolated_test=hparams.get("isolated_test") or 0, **speakers,
    )
    if hparams.get("channel_folder"):  # hparams/fsdd/voices.yaml: synthetic noises and impulse responses
        write_channel_manifests(hparams["channel_folder"], sample_rate=hparams["sample_rate"],
                                seed=hparams["channel_seed"])


def configure(hparams: dict) -> None:
    """Add to ``test_csvs``: ``test_isolated`` with ``isolated_test: k`` (single FSDD digits of the test speakers)
    and every set of ``extra_test_csvs`` (e.g. the TTS probe)."""
    for name, path in (hparams.get("extra_test_csvs") or {}).items():
        hparams["test_csvs"][name] = str(path)
    if hparams.get("isolated_test"):
        hparams["test_csvs"].setdefault("test_isolated", str(Path(hparams["prep_folder"]) / "test_isolated.csv"))


if __name__ == "__main__":
    main_guard(lambda: run_asr_recipe(sys.argv[1:], prepare, configure))
