"""Utterance classifier on the gated conformer: the ConformerCTC front-end and encoder, masked mean pooling
over the valid frames, a depth-switchable batch norm, and a linear head named ``classifier`` (spoken
language understanding, intents).

Why the batch norm: with per-utterance CMVN every utterance's mean-pooled encoder output is nearly the
same vector (across-utterance spread ~1 % of the feature scale at initialisation), so a linear head on it
learns only the class prior and training stalls at chance (measured: a 6-layer model could not even fit
32 training orders). Standardising the pooled vector across the batch (as x-vector systems do) fixes
this. The pooled statistics depend on how many layers ran, so there is one BatchNorm per executed depth k
(``pool_norms[k-1]``: the switchable batch norm of slimmable networks, Yu et al. 2018): training with
random gates updates the norm of the depth each batch ran, and inference at depth n uses norm n.

The model reuses :class:`~dld_brain.lobes.conformer.ConformerCTC` by subclassing it and replacing its CTC
head, so the front-end, the gated encoder, ``encode``, ``set_depth``/``at_depth`` (on ``model.encoder``),
:func:`~dld_brain.lobes.conformer.executed_parameters`, the latency measurement of the depth sweep and the
teacher checks (:func:`dld_brain.teacher.check_state_compatible`, which treats ``classifier.*`` as the output
layer) all work unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dld_brain.lobes.conformer import ConformerCTC
from dld_brain.losses import valid_frame_mask


def masked_mean(x: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, D) over the valid frames given by SpeechBrain relative lengths (B,) -> (B, D).

    Uses the same rounding as the encoder's padding mask (:func:`dld_brain.losses.valid_frame_mask`), so
    padded frames never contribute and every utterance keeps at least one frame.
    """
    mask = valid_frame_mask(wav_lens, x.shape[1]).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class ConformerClassifier(ConformerCTC):
    """Gated conformer utterance classifier: ``forward(feats, wav_lens, layers=None) -> log_probs (B, C)``.

    Same front-end (4x conv subsampling + projection + relative positions) and :class:`GatedConformerEncoder`
    as :class:`ConformerCTC`; the encoder output is mean-pooled over the valid frames and mapped to
    ``num_classes`` log-probabilities (float32) by the linear ``classifier`` head. The encoder depth is chosen
    with ``model.encoder.set_depth`` or per call with ``layers``.
    """

    def __init__(
        self,
        n_mels: int,
        num_classes: int,
        d_model: int = 256,
        num_layers: int = 12,
        nhead: int = 8,
        d_ffn: int = 2048,
        kernel_size: int = 31,
        dropout: float = 0.1,
        cnn_channels: Sequence[int] = (64, 32),
        drop_prob: float = 0.0,
        gate_seed: int = 0,
        depth_policy: str = "even",
        pool_norm: str = "depth_bn",
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        super().__init__(n_mels=n_mels, vocab_size=num_classes, d_model=d_model, num_layers=num_layers,
                         nhead=nhead, d_ffn=d_ffn, kernel_size=kernel_size, dropout=dropout,
                         cnn_channels=cnn_channels, drop_prob=drop_prob, gate_seed=gate_seed,
                         depth_policy=depth_policy)
        del self.ctc_head  # replaced by the utterance-level head below
        del self.vocab_size
        self.num_classes = num_classes
        if pool_norm not in ("depth_bn", "none"):
            raise ValueError(f"pool_norm must be 'depth_bn' or 'none', got {pool_norm!r}")
        self.pool_norms = (torch.nn.ModuleList(torch.nn.BatchNorm1d(d_model) for _ in range(num_layers))
                           if pool_norm == "depth_bn" else None)
        self.classifier = torch.nn.Linear(d_model, num_classes)
        #: constructor arguments, so the model can be rebuilt from a checkpoint
        self.config = {("num_classes" if k == "vocab_size" else k): v for k, v in self.config.items()}
        self.config["pool_norm"] = pool_norm

    def pool(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """Front-end + gated encoder + masked mean pooling, then the batch norm of the depth that ran:
        (B, T, n_mels) -> (B, d_model)."""
        pooled = masked_mean(self.encode(feats, wav_lens, layers), wav_lens)
        if self.pool_norms is None:
            return pooled
        norm = self.pool_norms[max(len(self.encoder.last_layers), 1) - 1]
        if self.training and pooled.shape[0] == 1:  # no batch statistics from one utterance: use the running ones
            return torch.nn.functional.batch_norm(pooled, norm.running_mean, norm.running_var, norm.weight,
                                                  norm.bias, training=False, eps=norm.eps)
        return norm(pooled)

    def forward(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """Return class log-probabilities (B, num_classes) computed in float32."""
        logits = self.classifier(self.pool(feats, wav_lens, layers))
        return torch.log_softmax(logits.float(), dim=-1)
