"""Checkpoint recoverables that make a resumed run continue exactly where the killed one stopped.

SpeechBrain checkpoints the model, optimiser, scheduler, epoch counter and (mid-epoch) the data loader;
:class:`RandomState` adds the global random generators (dropout, augmentation), so a run killed and
resumed draws the same random numbers as one that was never interrupted. :class:`AtomicCheckpointer`
never loads a checkpoint that was half-written when the run was killed.
"""

from __future__ import annotations

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


@register_checkpoint_hooks
class RandomState:
    """Saves and restores the Python, NumPy, torch CPU and (if present) CUDA random states."""

    @mark_as_saver
    def _save(self, path):
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del end_of_epoch
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


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
