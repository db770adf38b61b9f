"""Gated transformer encoder: SpeechBrain's ``TransformerEncoder`` with layers that are truly skipped.

:class:`GatedTransformerEncoder` is to SpeechBrain's ``TransformerEncoder`` what
:class:`dld_brain.lobes.conformer.GatedConformerEncoder` is to its ``ConformerEncoder``: same constructor
(plus ``drop_prob``, ``gate_seed``, ``depth_policy``), same ``forward`` and outputs, same ``state_dict`` keys;
layer i computes ``y + g_i * f_i(y)`` and a layer whose gate is 0 is not called.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoder

from dld_brain.gates import DynamicDepthMixin


class GatedTransformerEncoder(DynamicDepthMixin, TransformerEncoder):
    """Transformer encoder with per-layer gates: random layer dropping in training, chosen depth at inference.

    Extra arguments as for :class:`dld_brain.lobes.conformer.GatedConformerEncoder`. SpeechBrain's own
    ``layerdrop_prob`` is forced to 0: the gates replace it.
    """

    def __init__(self, num_layers: int, nhead: int, d_ffn: int, *args, drop_prob: float = 0.5, gate_seed: int = 0,
                 depth_policy: str = "even", **kwargs):
        kwargs["layerdrop_prob"] = 0.0
        super().__init__(num_layers, nhead, d_ffn, *args, **kwargs)
        self._init_gates(num_layers, drop_prob, gate_seed, depth_policy)

    def forward(
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        dynchunktrain_config=None,
        layers: Optional[Sequence[int]] = None,
        gates: Optional[torch.Tensor] = None,
    ):
        """Run the gated layers; same inputs/outputs as SpeechBrain's TransformerEncoder, plus ``layers``
        (one list for the batch) or ``gates`` (B, num_layers) per utterance."""
        if dynchunktrain_config is not None:
            raise ValueError("Dynamic Chunk Training is not supported by the transformer encoder")
        return self.run_gated_layers(src, layers, gates, lambda layer, y: layer(
            y, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, pos_embs=pos_embs))
