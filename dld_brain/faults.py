"""Fault injection for the robustness tests: kill the real training process at a chosen point.

Set ``DLD_FAULT=<point>:<step>[@<rank>]`` in the environment of a training run:
``after_step:<k>`` SIGKILLs the process right after optimiser step k (before any checkpoint of that step);
``during_save:<k>`` SIGKILLs it while the first checkpoint saved after step k is half-written;
``nan_loss:<k>`` makes the loss of step k NaN, ``nan_loss_from:<k>`` of every step from k on.
With ``@<rank>`` (e.g. ``nan_loss:3@1``) only that DDP rank (``RANK``; 0 without DDP) is affected.
Steps count within the epoch (SpeechBrain's ``brain.step``). Unset (the normal case), the hooks do nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "DLD_FAULT"


def _fault() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    spec, _, rank = spec.partition("@")
    if rank and int(rank) != int(os.environ.get("RANK", 0)):
        return None
    point, _, step = spec.partition(":")
    return point, int(step)


def maybe_kill(point: str, step: int) -> None:
    """SIGKILL this process if ``DLD_FAULT`` asks for ``point`` at (or, for saves, after) ``step``."""
    fault = _fault()
    if fault is None:
        return
    want, at = fault
    if want == point and (step == at if point == "after_step" else step >= at):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_loss(step: int) -> bool:
    """True if ``DLD_FAULT`` asks for a non-finite loss at this training step (on this rank)."""
    fault = _fault()
    if fault is None:
        return False
    want, at = fault
    return (want == "nan_loss" and step == at) or (want == "nan_loss_from" and step >= at)
