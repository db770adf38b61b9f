"""Shared test fixtures: where the real audio is, and a tiny-model override set for recipe runs."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the real audio beside the clone; DLD_SHARED_DATA points elsewhere (e.g. a copy carried to a GPU machine)
SHARED_DATA = Path(os.environ.get("DLD_SHARED_DATA", REPO.parent / "shared" / "data"))
FSDD_DIR = SHARED_DATA / "fsdd"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers importable by name

#: Command-line overrides that shrink the FSDD recipe to seconds: tiny model, few takes, one epoch.
TINY_FSDD = [
    "--num_layers=4", "--d_model=32", "--nhead=2", "--d_ffn=64", "--kernel_size=3",
    "--takes_per_digit=2", "--train_copies=1", "--number_of_epochs=1", "--download=False",
    "--batch_size=8", "--device=cpu",
]


def tiny(**changes) -> list:
    """TINY_FSDD with some values changed or added, e.g. ``tiny(number_of_epochs=2)``."""
    values = dict(arg[2:].split("=", 1) for arg in TINY_FSDD)
    values.update({k: str(v) for k, v in changes.items()})
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine makes two threads crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    """The shared FSDD copy (real speech); tests needing it skip only when it is absent."""
    if not (FSDD_DIR / "recordings").is_dir():
        pytest.skip(f"real audio not found at {FSDD_DIR}")
    return FSDD_DIR


@pytest.fixture(autouse=True)
def no_log_handlers_on_closed_streams():
    """Drop log handlers left writing to a stream that has since been closed (an earlier test's captured
    stdout/stderr, kept by a handler SpeechBrain's experiment set-up installed): logging to them prints
    '--- Logging error ---' tracebacks into the next test's captured output."""
    import logging

    loggers = [logging.getLogger()] + [item for item in logging.Logger.manager.loggerDict.values()
                                       if isinstance(item, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
    yield
