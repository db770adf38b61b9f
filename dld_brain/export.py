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

import shutil
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

compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: {sample_rate}
    n_fft: {n_fft}
    win_length: {win_ms}
    hop_length: {hop_ms}
    n_mels: {n_mels}

normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: {norm_type}

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


def inference_yaml(hparams: dict, model_config: dict, model_class: str = "dld_brain.lobes.ConformerCTC",
                   kind: str = "ctc") -> str:
    """The text of ``inference.yaml`` for a model of ``model_class`` (``kind``: ctc / classifier) trained
    with ``hparams``."""
    output_key, output_class, output_file, interface, call = _OUTPUTS[kind]
    fbank = hparams["compute_features"]
    stft = fbank.compute_STFT
    rate = stft.sample_rate
    config = dict(model_config, drop_prob=0.0)  # inference: no random gates
    args = "\n".join(f"    {k}: {list(v) if isinstance(v, tuple) else v}" for k, v in config.items())
    return _TEMPLATE.format(
        sample_rate=rate, blank_index=hparams.get("blank_index", 0), method=hparams.get("method", "model"),
        n_fft=stft.n_fft, win_ms=round(stft.win_length * 1000 / rate, 3), hop_ms=round(stft.hop_length * 1000 / rate, 3),
        n_mels=fbank.compute_fbanks.n_mels, norm_type=hparams["normalize"].norm_type, model_args=args,
        model_class=model_class, output_key=output_key, output_class=output_class, output_file=output_file,
        interface=interface, call=call)


def write_inference_bundle(hparams: dict, modules: dict, output_map_file: Union[str, Path],
                           folder: Union[str, Path]) -> Path:
    """Write the bundle for the weights currently in ``modules`` (load the checkpoint to export first);
    ``output_map_file`` is the SentencePiece model (CTC) or the saved label encoder (classifier)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = modules["model"]
    kind = model_kind(model)
    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    (folder / INFERENCE_YAML).write_text(inference_yaml(hparams, model.config, model_class, kind))
    torch.save(model.state_dict(), folder / "model.ckpt")
    modules["normalize"]._save(folder / "normalize.ckpt")
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

    from dld_brain.gates import select_layers
    from dld_brain.inference import DynamicDepthASR

    parser = argparse.ArgumentParser(description="Export the encoder + CTC head at fixed depths "
                                     "(one file per depth) from an inference bundle.")
    parser.add_argument("--model", required=True, help="inference bundle folder (<run>/inference)")
    parser.add_argument("--depths", type=int, nargs="+", help="depths to export (default: all)")
    parser.add_argument("--formats", nargs="+", default=["onnx"], choices=["onnx", "torchscript"])
    parser.add_argument("--out", help="output folder (default: <model>/export)")
    args = parser.parse_args(argv)
    asr = DynamicDepthASR.from_hparams(source=args.model)
    model = asr.mods.model.eval()
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
