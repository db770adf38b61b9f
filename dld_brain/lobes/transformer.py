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

from dld_brain.gates import DepthError, DynamicDepthMixin


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

    def gated_layers(self, gates: torch.Tensor, batch_size: int) -> list[int]:
        """Check per-utterance gates (batch_size, num_layers); return the layers some utterance keeps."""
        if gates.dim() != 2 or tuple(gates.shape) != (batch_size, self.num_layers):
            raise DepthError(f"gates must have shape (batch, num_layers) = ({batch_size}, {self.num_layers}), "
                             f"got {tuple(gates.shape)}")
        return [int(i) for i in torch.nonzero(gates.detach().ne(0).any(dim=0)).flatten()]

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
        if gates is not None and layers is not None:
            raise DepthError("give either layers (one list for the batch) or gates (per utterance), not both")
        run = self.gated_layers(gates, src.shape[0]) if gates is not None else self.active_layers(layers)
        self.last_layers = run
        output = src
        attention_lst = []
        hidden_state_lst = [output]
        for i in run:
            new, attention = self.layers[i](
                output, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, pos_embs=pos_embs)
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
