"""Gated Whisper encoder: transformers' ``WhisperEncoder`` with the project's gate / depth / policy interface.

:class:`GatedWhisperEncoder` takes over the modules of a ``WhisperForConditionalGeneration``'s encoder
(same attribute names, so the model's ``state_dict`` keys do not change) and runs the layers itself:
layer i computes ``y + g_i f_i(y)`` where ``f_i(y) = layer_i(y) - y`` (Whisper layers are pre-LN residual
blocks, so ``g_i = 0`` is the identity). A layer with ``g_i = 0`` for the whole batch is **never called**
(no compute, no autograd graph, no gradient). Training draws one Bernoulli gate per layer per batch
(``drop_prob``, :class:`dld_brain.gates.LayerDropSampler`); inference runs the depth chosen with
:meth:`set_depth` / :meth:`at_depth` (policies ``even`` / ``first`` / ``last``) or an explicit ``layers``
list; ``gates`` (B, num_layers) choose layers per utterance. Whisper's own ``encoder_layerdrop`` is set to 0.

Because it replaces ``model.model.encoder``, the model's ``forward`` (teacher-forced cross-entropy with
``labels``) and ``generate()`` run through the gates unchanged.

Short inputs (``slice_positions``). Stock Whisper only accepts 30 s of log-mel frames (3000) and pays for
all of them. With ``slice_positions=True`` the encoder accepts any even number of frames up to 3000 and
adds only the first ``frames / 2`` rows of the sinusoidal position table: the first frames of a cropped
input get exactly the positions they get in a padded one, but the model never saw a short encoder output
in training, so this changes the output (measured on real tiny.en in docs/whisper_dynamic.md before use).
``generate()`` pads short inputs back to 30 s itself; pass ``encoder_outputs`` (or use
:func:`dld_brain.whisper.greedy_decode`) to decode a cropped input.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from dld_brain.gates import DepthError, DynamicDepthMixin


class WhisperInputError(ValueError):
    """Input features the gated Whisper encoder cannot take; the message names the option to change."""


class GatedWhisperEncoder(DynamicDepthMixin, torch.nn.Module):
    """Whisper encoder (two convolutions + sinusoidal positions + pre-LN layers + final norm) with gated layers.

    ``forward(input_features, layers=None, gates=None)`` maps log-mel features (B, mels, T) to a
    ``BaseModelOutput`` whose ``last_hidden_state`` is (B, T/2, d_model). Build it with
    :func:`make_gated_whisper` (in place on a model) or from a stock ``WhisperEncoder``.
    """

    main_input_name = "input_features"

    def __init__(self, encoder, drop_prob: float = 0.0, gate_seed: int = 0, depth_policy: str = "even",
                 slice_positions: bool = False):
        super().__init__()
        self.config = encoder.config
        self.conv1 = encoder.conv1
        self.conv2 = encoder.conv2
        self.embed_positions = encoder.embed_positions
        self.layers = encoder.layers
        self.layer_norm = encoder.layer_norm
        self.dropout = float(encoder.dropout)
        self.config.encoder_layerdrop = 0.0  # our gates replace it
        self.slice_positions = bool(slice_positions)
        self.output_hidden_states = False
        self._init_gates(len(self.layers), drop_prob, gate_seed, depth_policy)

    # -- what generate() and transformers helpers look for on an encoder
    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def _freeze_parameters(self) -> None:
        for param in self.parameters():
            param.requires_grad = False

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.conv1

    @property
    def full_frames(self) -> int:
        """Log-mel frames of 30 s: the only input length stock Whisper accepts (3000 for the openai models)."""
        return int(self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0])

    def check_frames(self, frames: int) -> None:
        """Raise :class:`WhisperInputError` when the encoder cannot take ``frames`` log-mel frames."""
        full = self.full_frames
        if not self.slice_positions and frames != full:
            raise WhisperInputError(f"Whisper's encoder takes {full} log-mel frames (30 s), got {frames}: pad the "
                                    f"features, or set slice_positions: True to run on shorter inputs")
        if frames > full or frames < 2 or frames % 2:
            raise WhisperInputError(f"slice_positions needs an even number of log-mel frames in 2..{full}, "
                                    f"got {frames}")

    def forward(self, input_features: torch.Tensor, attention_mask=None, layers: Optional[Sequence[int]] = None,
                gates: Optional[torch.Tensor] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs):
        """Log-mel (B, mels, T) -> ``BaseModelOutput`` (last_hidden_state (B, T/2, d_model); hidden_states when
        ``output_hidden_states``: the input of the first run layer and the output of each run layer).
        ``attention_mask`` is ignored, as in transformers (Whisper attends to its padding)."""
        from transformers.modeling_outputs import BaseModelOutput

        del attention_mask, return_dict, kwargs
        if gates is not None and layers is not None:
            raise DepthError("give either layers (one list for the batch) or gates (per utterance), not both")
        if input_features.dim() != 3 or input_features.shape[1] != self.conv1.in_channels:
            raise WhisperInputError(f"input_features must be (batch, {self.conv1.in_channels} mels, frames), "
                                    f"got {tuple(input_features.shape)}")
        self.check_frames(int(input_features.shape[-1]))
        run = self.gated_layers(gates, input_features.shape[0]) if gates is not None else self.active_layers(layers)
        self.last_layers = run
        x = torch.nn.functional.gelu(self.conv1(input_features))
        x = torch.nn.functional.gelu(self.conv2(x)).permute(0, 2, 1)
        hidden = x + self.embed_positions.weight[: x.shape[1]]
        hidden = torch.nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        states = [hidden]
        for i in run:
            new = self.layers[i](hidden, None)
            if gates is not None:  # per utterance: y + g (f(y)), exact for g in {0, 1}
                g = gates[:, i].to(new.dtype)[:, None, None]
                new = g * new + (1.0 - g) * hidden
            hidden = new
            states.append(hidden)
        hidden = self.layer_norm(hidden)
        return BaseModelOutput(last_hidden_state=hidden,
                               hidden_states=tuple(states) if output_hidden_states else None)

    def parameter_counts(self) -> tuple[list[int], int]:
        """(parameters of each layer, trainable-or-not parameters run at every depth: convolutions, position
        table and final norm)."""
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in self.layers]
        shared = sum(p.numel() for m in (self.conv1, self.conv2, self.embed_positions, self.layer_norm)
                     for p in m.parameters())
        return per_layer, shared


def make_gated_whisper(model, drop_prob: float = 0.0, gate_seed: int = 0, depth_policy: str = "even",
                       slice_positions: bool = False) -> GatedWhisperEncoder:
    """Replace ``model.model.encoder`` (a ``WhisperForConditionalGeneration``) by a :class:`GatedWhisperEncoder`
    holding the same modules, in place; return it. The weights and ``state_dict`` keys are unchanged, so a
    checkpoint of the stock model loads into the gated one and vice versa."""
    encoder = model.model.encoder
    if isinstance(encoder, GatedWhisperEncoder):
        raise WhisperInputError("this model's encoder is already gated (make_gated_whisper was called twice)")
    if not hasattr(encoder, "layers") or not hasattr(encoder, "conv2"):
        raise WhisperInputError(f"model.model.encoder is a {type(encoder).__name__}, not a Whisper encoder")
    gated = GatedWhisperEncoder(encoder, drop_prob=drop_prob, gate_seed=gate_seed, depth_policy=depth_policy,
                                slice_positions=slice_positions)
    model.model.encoder = gated
    model.config.encoder_layerdrop = 0.0
    return gated


def crop_frames(features: torch.Tensor, seconds: Optional[float], hop_s: float = 0.01) -> torch.Tensor:
    """The first ``seconds`` of log-mel features (B, mels, 3000) padded as Whisper pads (an even frame count);
    ``None`` keeps all 30 s. The audio itself must be shorter than ``seconds`` or it is cut."""
    if seconds is None:
        return features
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= 30:
        raise WhisperInputError(f"encoder_seconds must be a number of seconds in (0, 30] or null, got {seconds!r}")
    frames = int(round(seconds / hop_s))
    frames += frames % 2
    return features[..., : min(frames, features.shape[-1])]
