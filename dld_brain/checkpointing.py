"""Checkpoint recoverables that make a resumed run continue exactly where the killed one stopped.

SpeechBrain checkpoints the model, optimiser, scheduler, epoch counter and (mid-epoch) the data loader;
:class:`RandomState` adds the global random generators (dropout, augmentation) of every DDP rank, so a run
killed and resumed draws the same random numbers as one that was never interrupted; :class:`NonFiniteCounter`
keeps the count of skipped (non-finite-loss) steps. :class:`AtomicCheckpointer`
never loads a checkpoint that was half-written when the run was killed.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    Checkpointer,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from dld_brain.faults import maybe_kill

logger = logging.getLogger(__name__)


class CheckpointFileError(RuntimeError):
    """A checkpoint file that is not what this project writes (e.g. a pickle with code in it); refused."""


def _python_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def local_random_state() -> dict:
    """This process's Python, NumPy, torch CPU and (if initialised) CUDA random states, as tensors and plain
    values only (so the file loads with ``torch.load(..., weights_only=True)``)."""
    state = {"python": _python_state(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    """Set this process's generators from a :func:`local_random_state` dict."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def load_plain(path) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain Python values only. Anything else (a
    pickle that would build arbitrary objects or run code) raises :class:`CheckpointFileError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError and friends: never fall back to a full unpickle
        raise CheckpointFileError(
            f"{path} is not a plain tensor file (refused to unpickle it: {type(err).__name__}); it was not "
            "written by this version or was tampered with: delete that checkpoint folder to resume from an "
            "earlier one") from None


class RandomState:
    """Saves and restores EVERY rank's Python, NumPy, torch CPU and CUDA random states.

    SpeechBrain runs savers on the main process only, so under DDP the other ranks' generators (dropout,
    augmentation) used to be lost, and every rank resumed with rank 0's. This saver runs on every process
    (registered with ``save_on_main_only=False``): the states are gathered to all ranks, rank 0 writes the
    list ``{"ranks": [state of rank 0, state of rank 1, ...]}``, and on loading each rank takes its own entry
    (from a run with fewer ranks: entry ``rank % n``, with a warning). The file holds tensors and plain values
    only and is loaded with ``weights_only=True`` (see :func:`load_plain`).
    """

    @mark_as_saver
    def _save(self, path):
        rank, world = _rank_and_world()
        states = [local_random_state()]
        if world > 1:
            states = [None] * world
            torch.distributed.all_gather_object(states, local_random_state())
        if rank == 0:
            torch.save({"ranks": states}, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del end_of_epoch
        data = load_plain(path)
        if not isinstance(data, dict) or not data.get("ranks"):
            raise CheckpointFileError(f"{path}: no per-rank random states in it (written by an older version?): "
                                      "delete that checkpoint folder to resume from an earlier one")
        rank, _ = _rank_and_world()
        states = data["ranks"]
        if rank >= len(states):
            logger.warning("%s holds the random states of %d rank(s); rank %d takes rank %d's (the run is not "
                           "an exact continuation with another number of processes)", path, len(states), rank,
                           rank % len(states))
        restore_random_state(states[rank % len(states)])


register_checkpoint_hooks(RandomState, save_on_main_only=False)


@register_checkpoint_hooks
class NonFiniteCounter:
    """Training steps skipped for a non-finite loss: ``epoch`` (in the current epoch, what
    ``--nonfinite_patience`` bounds) and ``total`` (whole run). Checkpointed, so a run resumed mid-epoch
    keeps counting the epoch's skips instead of starting from 0. Under DDP the skip decision is collective,
    so every rank holds the same counts (the main process saves them)."""

    def __init__(self):
        self.epoch = 0
        self.total = 0

    @mark_as_saver
    def _save(self, path):
        Path(path).write_text(json.dumps({"epoch": self.epoch, "total": self.total}))

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        data = json.loads(Path(path).read_text())
        self.total = int(data["total"])
        self.epoch = 0 if end_of_epoch else int(data["epoch"])


COMPLETE_MARKER = "COMPLETE"


class AtomicCheckpointer(Checkpointer):
    """SpeechBrain's Checkpointer, except that a checkpoint counts only once all its files are written.

    SpeechBrain writes ``CKPT.yaml`` first and the parameter files after it, so a run killed while saving
    leaves a directory that looks complete. Here a ``COMPLETE`` marker is written last and directories
    without it are ignored (with a warning) and never loaded.
    """

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006
        """Save as SpeechBrain does, then mark the checkpoint complete."""
        ckpt = super().save_checkpoint(meta=meta, end_of_epoch=end_of_epoch, name=name, verbosity=verbosity)
        if ckpt is not None:
            maybe_kill("during_save", int(self._step_hint()))
            marker = Path(ckpt.path) / COMPLETE_MARKER
            marker.write_text("all files of this checkpoint were written\n")
        return ckpt

    def _step_hint(self) -> int:
        """The training step of the Brain owning this checkpointer (for fault injection)."""
        brain = self.recoverables.get("brain")
        return getattr(brain, "step", 0) if brain is not None else 0

    def _list_checkpoint_dirs(self):
        complete = []
        for path in super()._list_checkpoint_dirs():
            if (path / COMPLETE_MARKER).is_file():
                complete.append(path)
            else:
                logger.warning("Ignoring incomplete checkpoint %s (the run stopped while saving it)", path)
        return complete
