"""Training augmentation as SpeechBrain recipes write it: ``Augmenter`` objects, plain callables, or lists.

``wav_augment`` / ``spec_augment`` in the hparams may be

* a SpeechBrain :class:`~speechbrain.augment.augmenter.Augmenter` (called ``aug(x, lens)`` -> ``(x, lens)``;
  with ``concat_original`` / ``parallel_augment`` / ``repeat_augment`` it returns more utterances than it got,
  and the labels must then be replicated the same way: :func:`replicate_labels`),
* a plain module called ``aug(x)`` (e.g. ``SpeedPerturb``, ``SpectrogramDrop``, ``Warping``; the older
  dld-brain YAMLs), lengths unchanged,
* a list of such objects, applied in order, or ``None``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from speechbrain.augment.augmenter import Augmenter


def _as_list(augment: Any) -> list:
    if augment is None:
        return []
    if isinstance(augment, (list, tuple)):
        return list(augment)
    return [augment]


def apply_augment(augment: Any, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``augment`` (see the module docstring) to a batch; return the (possibly replicated) batch and
    its relative lengths."""
    for aug in _as_list(augment):
        if isinstance(aug, Augmenter):
            x, lens = aug(x, lens)
        else:
            x = aug(x)
    return x, lens


def replicate_labels(augments: Iterable[Any], labels: torch.Tensor) -> torch.Tensor:
    """Replicate ``labels`` (tokens, token lengths, class indices: batch first) as the Augmenters in
    ``augments`` replicated their input in their last call, in the order they were applied. Plain callables
    never replicate. Call it right after the augmented forward of the same batch."""
    for augment in augments:
        for aug in _as_list(augment):
            if isinstance(aug, Augmenter) and hasattr(aug, "do_augment"):
                labels = aug.replicate_labels(labels)
    return labels
