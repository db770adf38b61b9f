"""Gated conformer encoder (layer dropping that truly skips layers) and a conformer CTC model around it.

:class:`GatedConformerEncoder` is a drop-in replacement for SpeechBrain's ``ConformerEncoder`` (same
constructor, same ``forward``, same ``state_dict`` keys) whose layer i computes ``y + g_i * f_i(y)``:
a layer whose gate is 0 is not called at all, so neither its compute nor its autograd graph exists.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import RelPosEncXL

from dld_brain.gates import DynamicDepthMixin


class GatedConformerEncoder(DynamicDepthMixin, ConformerEncoder):
    """Conformer encoder with per-layer gates: random layer dropping in training, chosen depth at inference.

    Arguments beyond SpeechBrain's ``ConformerEncoder``: ``drop_prob`` (probability a layer is skipped in a
    training batch; 0 = static model), ``gate_seed`` (seed of the gate generator, identical on all DDP
    ranks), ``depth_policy`` (``even``/``first``/``last``, used with :meth:`set_depth`).

    With DDP and ``drop_prob > 0`` the skipped layers' parameters get no gradient in that step: run with
    ``find_unused_parameters=True`` (the dld_brain Brains set it for you). Gates are drawn from a
    seeded generator, so all ranks skip the same layers in the same step.
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_ffn: int,
        nhead: int,
        kernel_size: int = 31,
        kdim=None,
        vdim=None,
        activation=Swish,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        attention_type: str = "RelPosMHAXL",
        output_hidden_states: bool = False,
        drop_prob: float = 0.5,
        gate_seed: int = 0,
        depth_policy: str = "even",
    ):
        super().__init__(
            num_layers=num_layers,
            d_model=d_model,
            d_ffn=d_ffn,
            nhead=nhead,
            kernel_size=kernel_size,
            kdim=kdim,
            vdim=vdim,
            activation=activation,
            bias=bias,
            dropout=dropout,
            causal=causal,
            attention_type=attention_type,
            output_hidden_states=output_hidden_states,
            layerdrop_prob=0.0,  # our gates replace SpeechBrain's own layer drop
        )
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
        """Run the gated layers; same inputs/outputs as SpeechBrain's ConformerEncoder, plus ``layers`` (one
        explicit list for the batch) or ``gates`` (B, num_layers) per-utterance gates, see :meth:`gated_layers`."""
        if self.attention_type == "RelPosMHAXL" and pos_embs is None:
            raise ValueError("RelPosMHAXL attention needs pos_embs (see speechbrain.nnet.attention.RelPosEncXL)")
        return self.run_gated_layers(src, layers, gates, lambda layer, y: layer(
            y, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, pos_embs=pos_embs,
            dynchunktrain_config=dynchunktrain_config))


class CTCOutputMixin:
    """The CTC path shared by the gated CTC models: ``embed`` (front-end) and ``run_layers`` (gated encoder)
    come from the model, the head and the chaining from here."""

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """CTC head: encoder output -> log-probabilities (B, T', vocab) in float32."""
        return torch.log_softmax(self.ctc_head(hidden).float(), dim=-1)

    def encode(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None, gates=None) -> torch.Tensor:
        """Front-end + gated encoder: (B, T, n_mels) -> (B, T', d_model)."""
        return self.run_layers(*self.embed(feats, wav_lens), layers=layers, gates=gates)

    def forward(self, feats: torch.Tensor, wav_lens: torch.Tensor, layers=None, gates=None) -> torch.Tensor:
        """Return CTC log-probabilities (B, T', vocab) computed in float32."""
        return self.output(self.encode(feats, wav_lens, layers, gates))


class ConformerCTC(CTCOutputMixin, torch.nn.Module):
    """Conformer CTC acoustic model: conv subsampling, linear projection, gated conformer, CTC head.

    ``forward(feats, wav_lens, layers=None)`` maps normalised filterbanks (B, T, n_mels) to CTC
    log-probabilities (B, T', vocab), T' = T/4 with the default front-end. The encoder depth is chosen with
    ``model.encoder.set_depth``.
    The front-end has one stride-2 conv block per entry of ``cnn_channels``: the default two give 4x
    subsampling (40 ms frames), three give 8x (80 ms; half the encoder frames, enough for utterance classification).
    """

    def __init__(
        self,
        n_mels: int,
        vocab_size: int,
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
    ):
        super().__init__()
        #: constructor arguments, so an inference bundle can rebuild the model (see dld_brain.export)
        self.config = dict(n_mels=n_mels, vocab_size=vocab_size, d_model=d_model, num_layers=num_layers,
                           nhead=nhead, d_ffn=d_ffn, kernel_size=kernel_size, dropout=dropout,
                           cnn_channels=list(cnn_channels), drop_prob=drop_prob, gate_seed=gate_seed,
                           depth_policy=depth_policy)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + tokens), got {vocab_size}")
        if len(cnn_channels) < 1:
            raise ValueError("cnn_channels needs at least one block, e.g. [64, 32] (4x subsampling)")
        self.vocab_size = vocab_size
        blocks = len(cnn_channels)  # one stride-2 conv block each: 2 blocks = 4x fewer frames, 3 = 8x
        self.frontend = ConvolutionFrontEnd(
            input_shape=(8, 10, n_mels),
            num_blocks=blocks,
            num_layers_per_block=1,
            out_channels=tuple(cnn_channels),
            kernel_sizes=(3,) * blocks,
            strides=(2,) * blocks,
            residuals=(False,) * blocks,
        )
        freq_out = n_mels
        for _ in range(blocks):
            freq_out = (freq_out + 1) // 2
        self.input_proj = torch.nn.Sequential(
            torch.nn.Linear(freq_out * cnn_channels[-1], d_model), torch.nn.Dropout(dropout)
        )
        self.pos_enc = RelPosEncXL(d_model)
        self.encoder = GatedConformerEncoder(
            num_layers=num_layers,
            d_model=d_model,
            d_ffn=d_ffn,
            nhead=nhead,
            kernel_size=kernel_size,
            dropout=dropout,
            causal=False,
            attention_type="RelPosMHAXL",
            drop_prob=drop_prob,
            gate_seed=gate_seed,
            depth_policy=depth_policy,
        )
        self.ctc_head = torch.nn.Linear(d_model, vocab_size)

    def embed(self, feats: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end only: (B, T, n_mels) -> encoder input (B, T', d_model) and padding mask (B, T', True=pad)."""
        x = self.frontend(feats)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = self.input_proj(x)
        abs_len = torch.round(wav_lens * x.shape[1]).long().clamp(min=1)
        pad_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= abs_len[:, None]
        return x, pad_mask

    def run_layers(self, x: torch.Tensor, pad_mask: torch.Tensor, layers=None, gates=None) -> torch.Tensor:
        """Gated encoder on :meth:`embed`'s output, with one ``layers`` list or per-utterance ``gates``."""
        out, _ = self.encoder(x, src_key_padding_mask=pad_mask, pos_embs=self.pos_enc(x), layers=layers, gates=gates)
        return out


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def executed_parameters(model: torch.nn.Module, layers: Optional[Sequence[int]] = None) -> dict[str, int]:
    """Count parameters executed at a layer set: ``encoder`` (run layers + final norm) and ``total`` (model).

    ``model`` is a :class:`ConformerCTC` or a :class:`GatedConformerEncoder`, or any model whose encoder
    has ``parameter_counts()`` (see :class:`dld_brain.lobes.wavlm.GatedWavLMEncoder`); ``layers=None`` = all.
    """
    encoder = model.encoder if hasattr(model, "encoder") else model
    run = range(encoder.num_layers) if layers is None else layers
    if hasattr(encoder, "parameter_counts"):  # e.g. GatedWavLMEncoder: (per-layer counts, always-run count)
        per_layer, shared = encoder.parameter_counts()
    else:
        per_layer, shared = [_num_params(layer) for layer in encoder.layers], _num_params(encoder.norm)
    layer_params = sum(per_layer[i] for i in run)
    enc = layer_params + shared
    total = _num_params(model) - sum(per_layer) + layer_params
    return {"encoder": enc, "total": total}
