"""Inference bundles: a self-contained folder from which a trained model is loaded for transcription.

``<output_folder>/inference/`` holds ``inference.yaml`` (features, normalisation, model, and a SpeechBrain
``Pretrainer``), ``model.ckpt``, ``normalize.ckpt`` and, for a CTC model, ``tokenizer.ckpt`` (the SentencePiece
model) or, for an utterance classifier, ``label_encoder.ckpt`` (the label encoder; SpeechBrain's Pretrainer
looks for ``<name>.ckpt``). Load it with
``dld_brain.inference.DynamicDepthASR.from_hparams(source=...)`` (transcription) or
``DynamicDepthClassifier`` (intent classification). Paths inside are relative to the folder, so the bundle
can be moved or uploaded as is.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Union

import torch

INFERENCE_YAML = "inference.yaml"

_TEMPLATE = """# Inference bundle written by dld_brain.export: load with
#   from dld_brain.inference import {interface}
#   model = {interface}.from_hparams(source="<this folder>")
#   model.{call}("a.wav", depth=3)
sample_rate: {sample_rate}
blank_index: {blank_index}
method: {method}

{features}

model: !new:{model_class}
{model_args}

{output_key}: !new:{output_class}

modules:
    model: !ref <model>
    normalize: !ref <normalize>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
        normalize: !ref <normalize>
        {output_key}: !ref <{output_key}>
    paths:
        model: model.ckpt
        normalize: normalize.ckpt
        {output_key}: {output_file}
"""

#: What maps model outputs to text or labels, per kind of model: (YAML key, class, file in the bundle).
_OUTPUTS = {
    "ctc": ("tokenizer", "sentencepiece.SentencePieceProcessor", "tokenizer.ckpt", "DynamicDepthASR",
            "transcribe_file"),
    "classifier": ("label_encoder", "speechbrain.dataio.encoder.CategoricalEncoder", "label_encoder.ckpt",
                   "DynamicDepthClassifier", "classify_file"),
}


def model_kind(model: torch.nn.Module) -> str:
    """``classifier`` for an utterance classifier (has a ``classifier`` head), else ``ctc``."""
    return "classifier" if hasattr(model, "classifier") and hasattr(model, "num_classes") else "ctc"


def features_yaml(hparams: dict) -> tuple[str, int]:
    """The ``compute_features`` and ``normalize`` entries of a bundle, and the sample rate: filterbanks with
    SpeechBrain's InputNormalization (conformer recipes) or the raw waveform with
    :class:`dld_brain.lobes.WaveformNormalization` (WavLM recipes)."""
    features, normalize = hparams["compute_features"], hparams["normalize"]
    if isinstance(features, torch.nn.Identity):  # a raw-waveform model
        if type(normalize).__name__ != "WaveformNormalization":
            raise TypeError(f"cannot describe {type(normalize).__name__} in an inference bundle")
        text = ("compute_features: !new:torch.nn.Identity\n\n"
                "normalize: !new:dld_brain.lobes.WaveformNormalization\n"
                f"    normalize: {json.dumps(normalize.normalize)}\n    eps: {normalize.eps}")
        return text, int(hparams["sample_rate"])
    stft = features.compute_STFT
    rate = stft.sample_rate
    text = ("compute_features: !new:speechbrain.lobes.features.Fbank\n"
            f"    sample_rate: {rate}\n    n_fft: {stft.n_fft}\n"
            f"    win_length: {round(stft.win_length * 1000 / rate, 3)}\n"
            f"    hop_length: {round(stft.hop_length * 1000 / rate, 3)}\n"
            f"    n_mels: {features.compute_fbanks.n_mels}\n\n"
            "normalize: !new:speechbrain.processing.features.InputNormalization\n"
            f"    norm_type: {normalize.norm_type}")
    return text, rate


def inference_yaml(hparams: dict, model_config: dict, model_class: str = "dld_brain.lobes.ConformerCTC",
                   kind: str = "ctc") -> str:
    """The text of ``inference.yaml`` for a model of ``model_class`` (``kind``: ctc / classifier) trained
    with ``hparams``; the model arguments are written as JSON values (valid YAML: null, true, nested maps)."""
    output_key, output_class, output_file, interface, call = _OUTPUTS[kind]
    features, rate = features_yaml(hparams)
    config = dict(model_config, drop_prob=0.0)  # inference: no random gates
    args = "\n".join(f"    {k}: {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in config.items())
    return _TEMPLATE.format(
        sample_rate=rate, blank_index=hparams.get("blank_index", 0), method=hparams.get("method", "model"),
        features=features, model_args=args, model_class=model_class, output_key=output_key,
        output_class=output_class, output_file=output_file, interface=interface, call=call)


def write_inference_bundle(hparams: dict, modules: dict, output_map_file: Union[str, Path],
                           folder: Union[str, Path]) -> Path:
    """Write the bundle for the weights currently in ``modules`` (load the checkpoint to export first);
    ``output_map_file`` is the SentencePiece model (CTC) or the saved label encoder (classifier)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = modules["model"]
    kind = model_kind(model)
    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    # a model whose constructor arguments need the network (e.g. a hub WavLM) says how to rebuild it offline
    config = model.bundle_config() if hasattr(model, "bundle_config") else model.config
    (folder / INFERENCE_YAML).write_text(inference_yaml(hparams, config, model_class, kind))
    torch.save(model.state_dict(), folder / "model.ckpt")
    normalize = modules["normalize"]
    if hasattr(normalize, "_save"):  # SpeechBrain's InputNormalization: its own statistics format
        normalize._save(folder / "normalize.ckpt")
    else:
        torch.save(normalize.state_dict(), folder / "normalize.ckpt")
    shutil.copyfile(output_map_file, folder / _OUTPUTS[kind][2])
    return folder


class FixedDepthCTC(torch.nn.Module):
    """The encoder + CTC head at one fixed layer set: ``(feats, wav_lens) -> log_probs``, for export."""

    def __init__(self, model: torch.nn.Module, layers):
        super().__init__()
        self.model = model
        self.layers = list(layers)

    def forward(self, feats: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        return self.model(feats, wav_lens, layers=self.layers)


def export_onnx(model: torch.nn.Module, layers, path: Union[str, Path], n_mels: int) -> Path:
    """Write an ONNX graph of the model at ``layers`` (dynamic batch and time axes); inputs ``feats``
    (B, T, n_mels normalised filterbanks) and ``wav_lens`` (B,) relative lengths; output ``log_probs``."""
    import warnings

    wrapper = FixedDepthCTC(model, layers).eval()
    example = (torch.randn(2, 200, n_mels), torch.tensor([1.0, 0.8]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is chatty about constant folding
        torch.onnx.export(wrapper, example, str(path), input_names=["feats", "wav_lens"],
                          output_names=["log_probs"], opset_version=17, dynamo=False,
                          dynamic_axes={"feats": {0: "batch", 1: "frames"}, "wav_lens": {0: "batch"},
                                        "log_probs": {0: "batch", 1: "out_frames"}})
    return Path(path)


def export_torchscript(model: torch.nn.Module, layers, path: Union[str, Path], n_mels: int) -> Path:
    """Write a traced TorchScript module of the model at ``layers`` (same inputs/outputs as ONNX)."""
    import warnings

    wrapper = FixedDepthCTC(model, layers).eval()
    example = (torch.randn(2, 200, n_mels), torch.tensor([1.0, 0.8]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))
    return Path(path)


def main(argv=None) -> None:
    """CLI: ``python -m dld_brain.export --model BUNDLE --depths 2 4 6 --formats onnx torchscript``."""
    import argparse

    parser = argparse.ArgumentParser(description="Export the encoder + CTC head at fixed depths "
                                     "(one file per depth) from an inference bundle.")
    parser.add_argument("--model", required=True, help="inference bundle folder (<run>/inference)")
    parser.add_argument("--depths", type=int, nargs="+", help="depths to export (default: all)")
    parser.add_argument("--formats", nargs="+", default=["onnx"], choices=["onnx", "torchscript"])
    parser.add_argument("--out", help="output folder (default: <model>/export)")
    args = parser.parse_args(argv)
    from ruamel.yaml import YAMLError

    try:
        _export(args)
    except ImportError as err:
        hint = ': pip install "dld-brain[export]"' if err.name in ("onnx", "onnxruntime") else ""
        print(f"error: {args.model}: {err}{hint}", file=sys.stderr)
        sys.exit(2)
    except (OSError, ValueError, KeyError, RuntimeError, YAMLError) as err:  # user input: one line, no traceback
        message = " ".join(str(err).split()) if str(err) else type(err).__name__
        print(f"error: {args.model}: {message}", file=sys.stderr)
        sys.exit(2)


def _export(args) -> None:
    """The export itself (see :func:`main`); raises on bad input."""
    from dld_brain.gates import select_layers
    from dld_brain.inference import DynamicDepthASR

    if not (Path(args.model) / INFERENCE_YAML).is_file():
        raise FileNotFoundError(f"not an inference bundle (no {INFERENCE_YAML}): give the <run>/inference "
                                "folder a recipe writes")
    asr = DynamicDepthASR.from_hparams(source=args.model)
    model = asr.mods.model.eval()
    if "n_mels" not in model.config:
        raise ValueError(f"{type(model).__name__} reads raw waveforms; ONNX/TorchScript export "
                         "covers the filterbank (conformer) models only. Load the bundle with "
                         "dld_brain.inference.DynamicDepthASR instead.")
    out = Path(args.out or Path(args.model) / "export")
    out.mkdir(parents=True, exist_ok=True)
    n_mels = model.config["n_mels"]
    for depth in args.depths or range(1, model.encoder.num_layers + 1):
        layers = select_layers(model.encoder.num_layers, depth, policy=model.encoder.depth_policy)
        for fmt in args.formats:
            if fmt == "onnx":
                path = export_onnx(model, layers, out / f"encoder_ctc_n{depth}.onnx", n_mels)
            else:
                path = export_torchscript(model, layers, out / f"encoder_ctc_n{depth}.pt", n_mels)
            print(f"depth {depth} (layers {layers}): {path}")


if __name__ == "__main__":
    main()
