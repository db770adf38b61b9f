"""Gated WavLM backbone (HuggingFace transformers) with the same depth interface as the gated conformer.

:class:`GatedWavLMEncoder` wraps a ``transformers.WavLMModel`` (from the hub, a local folder, or a config
for a randomly initialised model) and runs its transformer layers itself, so that a layer whose gate is 0
is **not called** (no compute, no autograd graph). WavLM's own ``layerdrop`` is set to 0 and never
consulted: only our gates act.

Relative position bias when layers are skipped. In WavLM only layer 0's attention owns the bucketed
relative-position table (``rel_attn_embed``); HF lets layer 0 compute the bias and passes it to the later
layers, each of which applies its own GRU-style gate to it. Skipping layer 0 would leave the later layers
without a bias. We therefore always compute the bias once per forward, **before** the first layer runs,
with layer 0's attention module (``layers[0].attention.compute_bias``, the exact computation HF does
inside layer 0) and pass it to whichever layers run. With all layers on this is bit-for-bit what HF does
(layer 0 receives the bias instead of computing the same tensor itself); with layer 0 skipped every run
layer sees the bias it was trained with. Consequently ``rel_attn_embed`` is executed at every depth and
counted among the always-run encoder parameters, not as part of layer 0 (:meth:`parameter_counts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from dld_brain.gates import DynamicDepthMixin


class WavLMLoadError(ValueError):
    """The WavLM weights or configuration could not be found or built; the message says what to do."""


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_wavlm(
    source: Optional[str] = None,
    local_folder: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    config_overrides: Optional[Mapping[str, Any]] = None,
    cache_dir: Optional[str] = None,
):
    """A ``transformers.WavLMModel``: from ``local_folder`` (no network) if set, else randomly initialised from
    ``config`` (WavLMConfig arguments) if given, else ``from_pretrained(source)`` (HuggingFace hub name).

    ``config_overrides`` (e.g. dropouts, ``mask_time_prob``) are applied to the loaded or given config;
    ``layerdrop`` is always 0 (our gates replace it).
    """
    from transformers import WavLMConfig, WavLMModel

    overrides = dict(config_overrides or {})
    overrides["layerdrop"] = 0.0
    if local_folder:
        folder = Path(local_folder)
        if not (folder / "config.json").is_file():
            raise WavLMLoadError(
                f"wavlm_local_folder {folder} holds no WavLM (no config.json): save one there with "
                "WavLMModel.from_pretrained('microsoft/wavlm-base-plus').save_pretrained(FOLDER) on a machine "
                "with internet, or set wavlm_local_folder: null to load from the hub")
        try:
            return WavLMModel.from_pretrained(str(folder), local_files_only=True, **overrides)
        except (OSError, ValueError) as err:
            raise WavLMLoadError(f"could not load WavLM from wavlm_local_folder {folder}: {err}") from err
    if config is not None:
        return WavLMModel(WavLMConfig(**{**dict(config), **overrides}))
    if not source:
        raise WavLMLoadError("no WavLM given: set wavlm_hub (e.g. microsoft/wavlm-base-plus), "
                             "wavlm_local_folder, or a wavlm_config for a model trained from scratch")
    try:
        return WavLMModel.from_pretrained(source, cache_dir=cache_dir, **overrides)
    except (OSError, ValueError) as err:
        raise WavLMLoadError(
            f"could not load WavLM {source!r} from the HuggingFace hub ({err}); without internet, save the "
            "model on another machine (save_pretrained) and point wavlm_local_folder at that folder") from err


class GatedWavLMEncoder(DynamicDepthMixin, torch.nn.Module):
    """WavLM (conv feature encoder + transformer) whose transformer layers are gated like the conformer's.

    ``forward(wavs, wav_lens=None, layers=None)`` maps waveforms (B, S) to hidden states (B, T, hidden).
    Training: each layer skipped with ``drop_prob`` per batch (a private seeded generator, see
    :class:`dld_brain.gates.LayerDropSampler`); inference: :meth:`set_depth` / :meth:`at_depth` choose the
    layers. ``freeze_feature_encoder`` keeps the convolutional feature encoder fixed (no gradient).
    Weights come from ``local_folder``, else ``config`` (random init), else the hub ``source``;
    ``num_layers``, when given, must match the loaded model (a check on the hparams).
    """

    def __init__(
        self,
        source: Optional[str] = None,
        local_folder: Optional[str] = None,
        config: Optional[Mapping[str, Any]] = None,
        config_overrides: Optional[Mapping[str, Any]] = None,
        cache_dir: Optional[str] = None,
        freeze_feature_encoder: bool = True,
        use_attention_mask: bool = True,
        drop_prob: float = 0.5,
        gate_seed: int = 0,
        depth_policy: str = "even",
        num_layers: Optional[int] = None,
    ):
        super().__init__()
        self.wavlm = build_wavlm(source, local_folder, config, config_overrides, cache_dir)
        loaded = len(self.wavlm.encoder.layers)
        if num_layers is not None and int(num_layers) != loaded:
            raise WavLMLoadError(f"num_layers is {num_layers} but the WavLM from {local_folder or source or 'config'} "
                                 f"has {loaded} transformer layers: set num_layers: {loaded}")
        self.wavlm.config.layerdrop = 0.0  # never consulted (we run the layers), but make it explicit
        if not hasattr(self.wavlm.config, "mask_feature_min_masks"):  # WavLMConfig lacks it, masking reads it
            self.wavlm.config.mask_feature_min_masks = 0
        self.freeze_feature_encoder = bool(freeze_feature_encoder)
        if self.freeze_feature_encoder:
            self.wavlm.freeze_feature_encoder()
        self.use_attention_mask = bool(use_attention_mask)
        self.output_size = int(self.wavlm.config.hidden_size)
        self._init_gates(len(self.wavlm.encoder.layers), drop_prob, gate_seed, depth_policy)

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The WavLM transformer layers (``wavlm.encoder.layers``)."""
        return self.wavlm.encoder.layers

    def feature_mask(self, num_frames: int, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor]):
        """Boolean (B, T) mask of the valid encoder frames for relative lengths ``wav_lens`` (None: no mask)."""
        if wav_lens is None or not self.use_attention_mask:
            return None
        abs_len = torch.round(wav_lens * wavs.shape[1]).long().clamp(min=1)
        sample_mask = (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < abs_len[:, None]).long()
        return self.wavlm._get_feature_vector_attention_mask(num_frames, sample_mask)

    def position_bias(self, batch: int, frames: int) -> torch.Tensor:
        """WavLM's relative position bias (B*heads, T, T), computed as HF's layer 0 does, whatever layers run."""
        attention = self.layers[0].attention
        bias = attention.compute_bias(frames, frames)
        return bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * attention.num_heads, frames, frames)

    def forward(
        self,
        wavs: torch.Tensor,
        wav_lens: Optional[torch.Tensor] = None,
        layers: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """Waveforms (B, S) -> hidden states (B, T, hidden) through the active layers only."""
        run = self.active_layers(layers)
        self.last_layers = run
        wavlm = self.wavlm
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_feature_encoder):
            extract = wavlm.feature_extractor(wavs).transpose(1, 2)
        mask = self.feature_mask(extract.shape[1], wavs, wav_lens)
        hidden, _ = wavlm.feature_projection(extract)
        hidden = wavlm._mask_hidden_states(hidden, attention_mask=mask)  # SpecAugment-style; training only
        encoder = wavlm.encoder
        if mask is not None:
            hidden = hidden.masked_fill(~mask[..., None], 0.0)  # padded frames are 0, as in HF
        hidden = hidden + encoder.pos_conv_embed(hidden)
        stable = bool(wavlm.config.do_stable_layer_norm)  # pre-LN variant: the norm comes after the layers
        if not stable:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        bias = self.position_bias(hidden.shape[0], hidden.shape[1]) if run else None
        for i in run:
            hidden, bias = self.layers[i](hidden, attention_mask=mask, position_bias=bias, index=i)
        if stable:
            hidden = encoder.layer_norm(hidden)
        if wavlm.adapter is not None:
            hidden = wavlm.adapter(hidden)
        return hidden

    def parameter_counts(self) -> tuple[list[int], int]:
        """(parameters of each layer, parameters run at every depth): the latter are the positional conv
        embedding, the encoder layer norm and the relative-position table (which lives in layer 0 but is
        used even when layer 0 is skipped). The feature encoder and projection count as front-end."""
        per_layer = [_num_params(layer) for layer in self.layers]
        table = _num_params(self.layers[0].attention.rel_attn_embed)
        per_layer[0] -= table
        encoder = self.wavlm.encoder
        shared = _num_params(encoder.pos_conv_embed) + _num_params(encoder.layer_norm) + table
        return per_layer, shared


class WaveformNormalization(torch.nn.Module):
    """Per-utterance zero mean / unit variance over the valid samples (padding stays 0), or identity.

    Plays the role of the ``normalize`` module of the fbank recipes for raw-waveform backbones: set
    ``normalize`` as the pretrained model expects (HF ``Wav2Vec2FeatureExtractor.do_normalize``).
    """

    def __init__(self, normalize: bool = True, eps: float = 1e-7):
        super().__init__()
        self.normalize = bool(normalize)
        self.eps = eps

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None, epoch=None) -> torch.Tensor:
        """(B, S) waveforms and relative lengths -> normalised waveforms (same shape)."""
        del epoch  # signature of speechbrain's InputNormalization
        if not self.normalize:
            return wavs
        if lengths is None:
            lengths = torch.ones(wavs.shape[0], device=wavs.device)
        abs_len = torch.round(lengths * wavs.shape[1]).long().clamp(min=1)
        mask = (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < abs_len[:, None]).to(wavs.dtype)
        n = mask.sum(1, keepdim=True)
        mean = (wavs * mask).sum(1, keepdim=True) / n
        var = ((wavs - mean) * mask).square().sum(1, keepdim=True) / n
        return (wavs - mean) / torch.sqrt(var + self.eps) * mask


class WavLMCTC(torch.nn.Module):
    """Gated WavLM backbone + linear CTC head: ``forward(wavs, wav_lens, layers=None)`` -> CTC log-probs.

    The depth is chosen with ``model.encoder.set_depth`` (same interface as :class:`ConformerCTC`); the
    backbone's arguments are those of :class:`GatedWavLMEncoder`.
    """

    def __init__(
        self,
        vocab_size: int,
        source: Optional[str] = None,
        local_folder: Optional[str] = None,
        config: Optional[Mapping[str, Any]] = None,
        config_overrides: Optional[Mapping[str, Any]] = None,
        cache_dir: Optional[str] = None,
        freeze_feature_encoder: bool = True,
        use_attention_mask: bool = True,
        head_dropout: float = 0.1,
        drop_prob: float = 0.0,
        gate_seed: int = 0,
        depth_policy: str = "even",
        num_layers: Optional[int] = None,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + tokens), got {vocab_size}")
        self.config = dict(vocab_size=vocab_size, source=source, local_folder=local_folder,
                           config=dict(config) if config is not None else None,
                           config_overrides=dict(config_overrides or {}), freeze_feature_encoder=freeze_feature_encoder,
                           use_attention_mask=use_attention_mask, head_dropout=head_dropout, drop_prob=drop_prob,
                           gate_seed=gate_seed, depth_policy=depth_policy, num_layers=num_layers)
        self.vocab_size = vocab_size
        self.encoder = GatedWavLMEncoder(
            source=source, local_folder=local_folder, config=config, config_overrides=config_overrides,
            cache_dir=cache_dir, freeze_feature_encoder=freeze_feature_encoder,
            use_attention_mask=use_attention_mask, drop_prob=drop_prob, gate_seed=gate_seed,
            depth_policy=depth_policy, num_layers=num_layers)
        self.dropout = torch.nn.Dropout(head_dropout)
        self.ctc_head = torch.nn.Linear(self.encoder.output_size, vocab_size)

    def bundle_config(self) -> dict:
        """Constructor arguments that rebuild this model offline (for an inference bundle): the backbone's full
        WavLM configuration instead of a hub name or local folder; the weights come from the bundle."""
        wavlm_config = self.encoder.wavlm.config.to_dict()
        for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
            wavlm_config.pop(key, None)
        return dict(self.config, source=None, local_folder=None, config=wavlm_config, config_overrides={},
                    num_layers=self.encoder.num_layers)

    def encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """Gated WavLM: (B, S) normalised waveforms -> (B, T, hidden)."""
        return self.encoder(wavs, wav_lens, layers=layers)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor, layers=None) -> torch.Tensor:
        """Return CTC log-probabilities (B, T, vocab) computed in float32."""
        logits = self.ctc_head(self.dropout(self.encode(wavs, wav_lens, layers)))
        return torch.log_softmax(logits.float(), dim=-1)
