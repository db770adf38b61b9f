"""Inference bundles: a self-contained folder from which a trained model is loaded for transcription.

``<output_folder>/inference/`` holds ``inference.yaml`` (features, normalisation, model, tokenizer and a
SpeechBrain ``Pretrainer``), ``model.ckpt``, ``normalize.ckpt`` and ``tokenizer.ckpt`` (the SentencePiece
model); load it with ``dld_brain.inference.DynamicDepthASR.from_hparams(source=...)``. Paths inside are relative to the folder,
so the bundle can be moved or uploaded as is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Union

import torch

INFERENCE_YAML = "inference.yaml"

_TEMPLATE = """# Inference bundle written by dld_brain.export: load with
#   from dld_brain.inference import DynamicDepthASR
#   asr = DynamicDepthASR.from_hparams(source="<this folder>")
#   asr.transcribe_file("a.wav", depth=3)
sample_rate: {sample_rate}
blank_index: {blank_index}
method: {method}

compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: {sample_rate}
    n_fft: {n_fft}
    win_length: {win_ms}
    hop_length: {hop_ms}
    n_mels: {n_mels}

normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: {norm_type}

model: !new:dld_brain.lobes.ConformerCTC
{model_args}

tokenizer: !new:sentencepiece.SentencePieceProcessor

modules:
    model: !ref <model>
    normalize: !ref <normalize>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
        normalize: !ref <normalize>
        tokenizer: !ref <tokenizer>
    paths:
        model: model.ckpt
        normalize: normalize.ckpt
        tokenizer: tokenizer.ckpt
"""


def inference_yaml(hparams: dict, model_config: dict) -> str:
    """The text of ``inference.yaml`` for a model trained with ``hparams``."""
    fbank = hparams["compute_features"]
    stft = fbank.compute_STFT
    rate = stft.sample_rate
    config = dict(model_config, drop_prob=0.0)  # inference: no random gates
    args = "\n".join(f"    {k}: {list(v) if isinstance(v, tuple) else v}" for k, v in config.items())
    return _TEMPLATE.format(
        sample_rate=rate, blank_index=hparams.get("blank_index", 0), method=hparams.get("method", "model"),
        n_fft=stft.n_fft, win_ms=round(stft.win_length * 1000 / rate, 3), hop_ms=round(stft.hop_length * 1000 / rate, 3),
        n_mels=fbank.compute_fbanks.n_mels, norm_type=hparams["normalize"].norm_type, model_args=args)


def write_inference_bundle(hparams: dict, modules: dict, tokenizer_file: Union[str, Path],
                           folder: Union[str, Path]) -> Path:
    """Write the bundle for the weights currently in ``modules`` (load the checkpoint to export first)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = modules["model"]
    (folder / INFERENCE_YAML).write_text(inference_yaml(hparams, model.config))
    torch.save(model.state_dict(), folder / "model.ckpt")
    modules["normalize"]._save(folder / "normalize.ckpt")
    shutil.copyfile(tokenizer_file, folder / "tokenizer.ckpt")  # SentencePiece model
    return folder
