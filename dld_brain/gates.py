"""Layer gates for dynamic-depth encoders: which layers run, in training and at inference.

Training: :class:`LayerDropSampler` draws one Bernoulli gate per layer per batch from its own seeded
generator, so every DDP rank draws the same gates (same seed, same step) and a resumed run continues the
same sequence (the sampler is a SpeechBrain checkpoint recoverable).
Inference: :func:`select_layers` turns a depth ``n`` and a policy into an explicit, sorted layer list.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from dld_brain.safe_files import load_torch_file

#: Inference policies understood by :func:`select_layers`.
DEPTH_POLICIES = ("even", "first", "last")


class DepthError(ValueError):
    """An impossible depth, layer list or policy; the message says what is allowed."""


def select_layers(
    num_layers: int,
    depth: Optional[int] = None,
    layers: Optional[Sequence[int]] = None,
    policy: str = "even",
) -> list[int]:
    """Return the sorted 0-based indices of the layers to run.

    ``layers`` (an explicit list) wins over ``depth``; with neither, all layers run. Policies for ``depth=n``:
    ``even``: n layers spread evenly, always ending at the last layer (N=12, n=4 -> 2, 5, 8, 11);
    ``first``: layers 0..n-1 (early exit); ``last``: the n last layers.
    """
    if layers is not None:
        return validate_layers(num_layers, layers)
    if depth is None:
        return list(range(num_layers))
    if not _is_index(depth):
        raise DepthError(f"depth must be an integer in 1..{num_layers}, got {depth!r}")
    depth = int(depth)
    if not 1 <= depth <= num_layers:
        raise DepthError(f"depth {depth} is out of range: this encoder has {num_layers} layers (1..{num_layers})")
    if policy == "even":
        return [(2 * (i + 1) * num_layers + depth) // (2 * depth) - 1 for i in range(depth)]  # round half up
    if policy == "first":
        return list(range(depth))
    if policy == "last":
        return list(range(num_layers - depth, num_layers))
    raise DepthError(f"unknown depth policy {policy!r}; choose one of {DEPTH_POLICIES} or pass an explicit layer list")


def _is_index(value) -> bool:
    """An integer (Python or NumPy/torch integer scalar) that is not a bool."""
    return not isinstance(value, bool) and hasattr(value, "__index__") and not isinstance(value, str)


def validate_layers(num_layers: int, layers: Sequence[int]) -> list[int]:
    """Check an explicit layer list (0-based integers, unique, in range, non-empty) and return it sorted."""
    valid = f"valid indices are 0..{num_layers - 1} (0-based)"
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise DepthError(f"layers must be a list of integers, got {layers!r}; {valid}")
    items = list(layers)
    bad_type = [i for i in items if not _is_index(i)]
    if bad_type:
        raise DepthError(f"layer list must hold integers, got {bad_type} in {items!r}; {valid}")
    out = [int(i) for i in items]
    if not out:
        raise DepthError(f"layer list is empty: run at least one layer; {valid}")
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise DepthError(f"layers {bad} out of range: {valid}")
    if len(set(out)) != len(out):
        raise DepthError(f"layer list {out} repeats a layer; give each of 0..{num_layers - 1} at most once")
    return sorted(out)


@register_checkpoint_hooks
class LayerDropSampler:
    """Draws per-batch keep/skip decisions, each layer skipped with probability ``drop_prob``.

    Uses a private ``torch.Generator`` so the gate sequence depends only on ``seed`` and the step: all DDP
    ranks agree, and the state is saved/restored with the checkpoint for exact resumption.
    """

    def __init__(self, num_layers: int, drop_prob: float = 0.5, seed: int = 0):
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.num_layers = num_layers
        self.drop_prob = float(drop_prob)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.draws = 0

    def sample(self) -> list[int]:
        """Draw one gate per layer; return the indices of the layers kept (possibly empty)."""
        keep = torch.rand(self.num_layers, generator=self.generator) >= self.drop_prob
        self.draws += 1
        return [i for i in range(self.num_layers) if keep[i]]

    @mark_as_saver
    def _save(self, path):
        torch.save({"state": self.generator.get_state(), "draws": self.draws, "seed": self.seed}, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del end_of_epoch
        saved = load_torch_file(path)
        self.generator.set_state(saved["state"])
        self.draws = saved["draws"]


class DynamicDepthMixin:
    """Depth control shared by the gated encoders: random gates in training, a chosen depth at inference.

    A subclass calls :meth:`_init_gates` in its constructor and runs ``self.active_layers(layers)`` in
    ``forward`` (storing the result in ``self.last_layers``).
    """

    def _init_gates(self, num_layers: int, drop_prob: float, gate_seed: int, depth_policy: str) -> None:
        """Create the gate sampler and the inference-depth state."""
        if depth_policy not in DEPTH_POLICIES:
            raise DepthError(f"unknown depth_policy {depth_policy!r}; choose one of {DEPTH_POLICIES}")
        self.num_layers = num_layers
        self.gate_sampler = LayerDropSampler(num_layers, drop_prob, gate_seed)
        self.depth_policy = depth_policy
        self.inference_layers: Optional[list[int]] = None  # None = all layers
        self.last_layers: list[int] = list(range(num_layers))

    def gated_layers(self, gates: torch.Tensor, batch_size: int) -> list[int]:
        """Check per-utterance gates (batch_size, num_layers) and return the layers some utterance keeps
        (gate != 0); a layer every utterance skips is not computed. Gradients flow to the gates of the rest."""
        if gates.dim() != 2 or tuple(gates.shape) != (batch_size, self.num_layers):
            raise DepthError(f"gates must have shape (batch, num_layers) = ({batch_size}, {self.num_layers}), "
                             f"got {tuple(gates.shape)}")
        return [int(i) for i in torch.nonzero(gates.detach().ne(0).any(dim=0)).flatten()]

    def run_gated_layers(self, src: torch.Tensor, layers, gates, call_layer):
        """The gated forward shared by the encoders: run ``call_layer(layer, y) -> (f(y), attention)`` on the
        chosen layers only (``layers`` for the batch, or per-utterance ``gates``), then the final norm.
        Returns what SpeechBrain's encoders return: (output, attentions[, hidden states])."""
        if gates is not None and layers is not None:
            raise DepthError("give either layers (one list for the batch) or gates (per utterance), not both")
        run = self.gated_layers(gates, src.shape[0]) if gates is not None else self.active_layers(layers)
        self.last_layers = run
        output = src
        attention_lst = []
        hidden_state_lst = [output]
        for i in run:
            new, attention = call_layer(self.layers[i], output)
            if gates is not None:  # per utterance: y + g (f(y) - y), exact for g in {0, 1}
                g = gates[:, i].to(new.dtype)[:, None, None]
                new = g * new + (1.0 - g) * output
            output = new
            attention_lst.append(attention)
            if self.output_hidden_states:
                hidden_state_lst.append(output)
        output = self.norm(output)
        if self.output_hidden_states:
            return output, attention_lst, hidden_state_lst
        return output, attention_lst

    @property
    def drop_prob(self) -> float:
        """Probability that a layer is skipped in a training batch (0 = static training)."""
        return self.gate_sampler.drop_prob

    def set_depth(
        self,
        depth: Optional[int] = None,
        layers: Optional[Sequence[int]] = None,
        policy: Optional[str] = None,
    ) -> list[int]:
        """Choose the layers used outside training: a depth (with a policy) or an explicit list; None = all.

        Returns the chosen 0-based layer indices. Raises DepthError for an invalid depth or list.
        """
        chosen = select_layers(self.num_layers, depth, layers, policy or self.depth_policy)
        self.inference_layers = None if len(chosen) == self.num_layers else chosen
        return chosen

    @contextlib.contextmanager
    def at_depth(self, depth=None, layers=None, policy=None) -> Iterator[list[int]]:
        """Context manager: run at a depth or layer list inside the block, then restore the previous choice."""
        previous = self.inference_layers
        try:
            yield self.set_depth(depth, layers, policy)
        finally:
            self.inference_layers = previous

    def active_layers(self, layers: Optional[Sequence[int]] = None) -> list[int]:
        """Layers the next forward runs: an explicit list, else random gates in training, else the set depth."""
        if layers is not None:
            return select_layers(self.num_layers, layers=layers)
        if self.training and self.drop_prob > 0.0:
            return self.gate_sampler.sample()
        if self.inference_layers is not None:
            return list(self.inference_layers)
        return list(range(self.num_layers))
