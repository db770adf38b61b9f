"""Utterance classifier on the gated conformer: the ConformerCTC front-end and encoder, masked mean (or
attention) pooling over the valid frames, a batch norm with per-depth statistics, and a linear head named
``classifier`` (spoken language understanding, intents).

Why the batch norm: with per-utterance CMVN every utterance's mean-pooled encoder output is nearly the
same vector (they differ by a small fraction of the feature scale at initialisation), so a linear head on
it learns only the class prior and training stalls at chance (on the coffee orders the teacher stayed at
the class prior for 8 epochs: ``recipes/SpeechToIntent/train.py hparams/slu/teacher.yaml --pool_norm=none
--number_of_epochs=8``). Standardising the pooled vector across the batch (as x-vector systems do)
fixes this. The pooled statistics depend on how many layers ran, so each executed depth k has its own
statistics (``pool_norms[k-1]``, after the switchable batch norm of slimmable networks, Yu et al. 2018):

- ``depth_stats`` (recommended): per-depth statistics, one scale/shift shared by all depths. Under random
  dropping with p=0.5 the full depth runs in 1.6 % of the batches, so per-depth scale/shift would barely
  train at the depths that matter most;
- ``depth_bn``: per-depth statistics and per-depth scale/shift (the slimmable-network original).

Training uses batch statistics. The running averages kept meanwhile are wrong for evaluation (the pooled
vectors' common part moves between steps by more than they differ from one another), so
:meth:`ConformerClassifier.calibrate_pool_norms` recomputes every depth's statistics with the current
weights before each validation and test (BN recalibration, Yu & Huang 2019); the brain does it for you.

The model reuses :class:`~dld_brain.lobes.conformer.ConformerCTC` by subclassing it and replacing its CTC
head, so the front-end, the gated encoder, ``encode``, ``set_depth``/``at_depth`` (on ``model.encoder``),
:func:`~dld_brain.lobes.conformer.executed_parameters`, the latency measurement of the depth sweep and the
teacher checks (:func:`dld_brain.teacher.check_state_compatible`, which treats ``classifier.*`` as the output
layer) all work unchanged.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from dld_brain.gates import select_layers
from dld_brain.lobes.conformer import ConformerCTC
from dld_brain.losses import valid_frame_mask


def masked_mean(x: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, D) over the valid frames given by SpeechBrain relative lengths (B,) -> (B, D).

    Uses the same rounding as the encoder's padding mask (:func:`dld_brain.losses.valid_frame_mask`), so
    padded frames never contribute and every utterance keeps at least one frame.
    """
    mask = valid_frame_mask(wav_lens, x.shape[1]).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def masked_attention_pool(x: torch.Tensor, wav_lens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Weighted mean of (B, T, D) with softmax weights of ``scores`` (B, T) over the valid frames -> (B, D)."""
    mask = valid_frame_mask(wav_lens, x.shape[1])
    weights = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=1).to(x.dtype)
    return (x * weights.unsqueeze(-1)).sum(dim=1)


class ConformerClassifier(ConformerCTC):
    """Gated conformer utterance classifier: ``forward(feats, wav_lens, layers=None) -> log_probs (B, C)``.

    Same front-end (conv subsampling, 4x or with three ``cnn_channels`` 8x, + projection + relative
    positions) and :class:`GatedConformerEncoder` as :class:`ConformerCTC`; the encoder output is pooled over
    the valid frames (``pooling``: ``mean`` or ``attention``), batch-normalised with the statistics of the
    executed depth (``pool_norm``, see the module docstring) and mapped to ``num_classes`` log-probabilities
    (float32) by the linear ``classifier`` head. ``pooling: frame_posteriors`` instead classifies every frame
    and averages the posteriors (no pooled vector; ``pool_norm: none``). The encoder depth is chosen with
    ``model.encoder.set_depth`` or per call with ``layers``.
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
        pool_norm: str = "depth_stats",
        pooling: str = "mean",
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
        if pool_norm not in ("depth_stats", "depth_bn", "none"):
            raise ValueError(f"pool_norm must be 'depth_stats', 'depth_bn' or 'none', got {pool_norm!r}")
        self.pool_norms = (torch.nn.ModuleList(torch.nn.BatchNorm1d(d_model) for _ in range(num_layers))
                           if pool_norm != "none" else None)
        if pool_norm == "depth_stats":  # one scale/shift for every depth; statistics stay per depth
            for norm in self.pool_norms[1:]:
                norm.weight, norm.bias = self.pool_norms[0].weight, self.pool_norms[0].bias
        if pooling not in ("mean", "attention", "frame_posteriors"):
            raise ValueError(f"pooling must be 'mean', 'attention' or 'frame_posteriors', got {pooling!r}")
        if pooling == "frame_posteriors" and pool_norm != "none":
            raise ValueError("pooling 'frame_posteriors' classifies every frame and averages the posteriors: "
                             "it has no pooled vector to normalise, set pool_norm: none")
        #: attention pooling: one score per frame (a small MLP), softmax over the valid frames
        self.attention = (torch.nn.Sequential(torch.nn.Linear(d_model, d_model // 2), torch.nn.Tanh(),
                                              torch.nn.Linear(d_model // 2, 1))
                          if pooling == "attention" else None)
        self.classifier = torch.nn.Linear(d_model, num_classes)
        #: constructor arguments, so the model can be rebuilt from a checkpoint
        self.config = {("num_classes" if k == "vocab_size" else k): v for k, v in self.config.items()}
        self.config["pool_norm"] = pool_norm
        self.config["pooling"] = pooling
        self.pooling = pooling

    def pooled_vector(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """Front-end + gated encoder + masked mean (or attention) pooling, before the batch norm:
        (B, T, n_mels) -> (B, d_model)."""
        hidden = self.encode(feats, wav_lens, layers)
        if self.attention is None:
            return masked_mean(hidden, wav_lens)
        return masked_attention_pool(hidden, wav_lens, self.attention(hidden).squeeze(-1))

    def pool(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """:meth:`pooled_vector`, then the batch norm of the depth that ran: (B, T, n_mels) -> (B, d_model)."""
        pooled = self.pooled_vector(feats, wav_lens, layers)
        if self.pool_norms is None:
            return pooled
        norm = self.pool_norms[max(len(self.encoder.last_layers), 1) - 1]
        if self.training and pooled.shape[0] == 1:  # no batch statistics from one utterance: use the running ones
            return torch.nn.functional.batch_norm(pooled, norm.running_mean, norm.running_var, norm.weight,
                                                  norm.bias, training=False, eps=norm.eps)
        return norm(pooled)

    @torch.no_grad()
    def calibrate_pool_norms(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             layer_sets: Optional[Sequence[Sequence[int]]] = None) -> None:
        """Set the pool-norm statistics of each layer set's depth to the mean and variance of the pooled vectors
        of ``batches`` ((feats, wav_lens) pairs, un-augmented) computed in eval mode with the current weights.

        Why: the pooled vectors vary little between utterances, while every optimiser step moves their
        common part; the running averages kept during training then lag behind and eval-mode predictions
        fall to chance (coffee-order teacher, first 4 epochs: validation loss 3.6-9.2 at 12 % accuracy with
        ``--pool_norm_calibration=0``, 2.3-2.5 with recalibration). Recomputing the statistics for the weights
        being evaluated (BN recalibration, as in universally slimmable networks, Yu & Huang 2019) fixes
        evaluation at every depth.
        ``layer_sets`` defaults to the encoder's layers at depths 1..N (its depth policy).
        """
        if self.pool_norms is None:
            return
        batches = list(batches)
        if not batches:
            raise ValueError("calibrate_pool_norms needs at least one batch of (feats, wav_lens)")
        if layer_sets is None:
            n = self.encoder.num_layers
            layer_sets = [select_layers(n, depth, policy=self.encoder.depth_policy) for depth in range(1, n + 1)]
        was_training = self.training
        self.eval()
        try:
            for layers in layer_sets:
                pooled = torch.cat([self.pooled_vector(f, lens, layers=list(layers)).float() for f, lens in batches])
                norm = self.pool_norms[max(len(self.encoder.last_layers), 1) - 1]
                norm.running_mean.copy_(pooled.mean(dim=0))
                norm.running_var.copy_(pooled.var(dim=0, unbiased=pooled.shape[0] > 1))
                norm.num_batches_tracked.add_(1)
        finally:
            self.train(was_training)

    def forward(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """Return class log-probabilities (B, num_classes) computed in float32."""
        if self.pooling == "frame_posteriors":
            hidden = self.encode(feats, wav_lens, layers)
            frame_log_probs = torch.log_softmax(self.classifier(hidden).float(), dim=-1)  # (B, T, C)
            mask = valid_frame_mask(wav_lens, hidden.shape[1])
            frame_log_probs = frame_log_probs.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            return torch.logsumexp(frame_log_probs, dim=1) - torch.log(mask.sum(dim=1, keepdim=True).float())
        logits = self.classifier(self.pool(feats, wav_lens, layers))
        return torch.log_softmax(logits.float(), dim=-1)
