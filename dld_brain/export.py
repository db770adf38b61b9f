"""Inference bundles: a self-contained folder from which a trained model is loaded for transcription.

``<output_folder>/inference/`` holds ``inference.yaml`` (features, normalisation, model, and a SpeechBrain
``Pretrainer``), ``model.ckpt`` (the weights as safetensors, a format that holds tensors only; the name
follows SpeechBrain's ``<loadable>.ckpt`` convention), ``normalize.ckpt`` and, for a CTC model,
``tokenizer.ckpt`` (the SentencePiece model) or, for an utterance classifier, ``label_encoder.ckpt`` (the label
encoder; SpeechBrain's Pretrainer looks for ``<name>.ckpt``). A CTC bundle also carries its decoder
(``decoder``: beam size, LM weight, word score; the lexicon and KenLM files as ``lexicon_file.ckpt`` /
``lm_file.ckpt`` when used), the ``encoder`` / ``decoding_function`` entries, and a copy of ``inference.yaml``
as ``hyperparams.yaml``, so that SpeechBrain's own ``EncoderASR.from_hparams(source=..., savedir=...)`` loads
it. Load it with
``dld_brain.inference.DynamicDepthASR.from_hparams(source=...)`` (transcription) or
``DynamicDepthClassifier`` (intent classification). Paths inside are relative to the folder, so the bundle
can be moved or uploaded as is.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Union

import torch

from dld_brain.safe_files import save_weights
from dld_brain.decoding import DECODER_DEFAULTS, DecoderConfigError, decoder_settings, resolve_lexicon

INFERENCE_YAML = "inference.yaml"
#: the same text under the file name SpeechBrain's ``EncoderASR.from_hparams(source=...)`` reads by default
STOCK_YAML = "hyperparams.yaml"

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

audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer
    sample_rate: {sample_rate}
{decoding}
modules:
    model: !ref <model>
    normalize: !ref <normalize>{extra_modules}

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        model: !ref <model>
        normalize: !ref <normalize>
        {output_key}: !ref <{output_key}>{extra_loadables}
    paths:
        model: model.ckpt
        normalize: normalize.ckpt
        {output_key}: {output_file}{extra_paths}
    custom_hooks:  # loaders that run no code from the files (see dld_brain.safe_files)
        model: !name:dld_brain.safe_files.transfer_weights
        normalize: !name:dld_brain.safe_files.transfer_statistics
"""

#: The CTC decoding part of a bundle (dld_brain.decoding): SpeechBrain's EncoderASR reads ``encoder`` and
#: ``decoding_function``; DynamicDepthASR reads ``decoder``. Lexicon and LM files travel in the bundle.
_DECODING = """
# SpeechBrain's EncoderASR: encoder(wavs, wav_lens) -> log-probabilities at full depth, then decoding_function
encoder: !new:dld_brain.inference.WaveformCTC
    compute_features: !ref <compute_features>
    normalize: !ref <normalize>
    model: !ref <model>
{files}
# decoding (dld_brain.decoding): beam_size 0 = greedy; a lexicon restricts the output to its words
decoder: !new:dld_brain.decoding.CTCDecoder
    tokenizer: !ref <tokenizer>
    blank_index: !ref <blank_index>
    beam_size: {beam_size}
    lexicon: {lexicon}
    lm: {lm}
    lm_weight: {lm_weight}
    word_score: {word_score}

decoding_function: !name:dld_brain.decoding.decode_tokens
    decoder: !ref <decoder>
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


def decoding_yaml(decoder: Optional[dict]) -> dict:
    """The template parts of a CTC bundle's decoding: ``decoder`` holds ``beam_size``, ``lexicon`` and
    ``lm_path`` (file names inside the bundle, or None), ``lm_weight``, ``word_score``."""
    decoder = {**DECODER_DEFAULTS, "beam_size": 0, **(decoder or {})}
    files, loadables, paths = "", "", ""
    refs = {"lexicon": "null", "lm": "null"}
    for key, name in (("lexicon", decoder["lexicon"]), ("lm", decoder["lm_path"])):
        if name:  # SpeechBrain's Pretrainer collects a loadable as <key>.ckpt: the file has that name
            files += f"{key}_file: !new:dld_brain.decoding.BundleFile\n"
            loadables += f"\n        {key}_file: !ref <{key}_file>"
            paths += f"\n        {key}_file: {name}"
            refs[key] = f"!ref <{key}_file>"
    decoding = _DECODING.format(files=files, beam_size=int(decoder["beam_size"] or 0), lexicon=refs["lexicon"],
                                lm=refs["lm"], lm_weight=float(decoder["lm_weight"]),
                                word_score=float(decoder["word_score"]))
    return {"decoding": decoding, "extra_modules": "\n    encoder: !ref <encoder>",
            "extra_loadables": loadables, "extra_paths": paths}


def inference_yaml(hparams: dict, model_config: dict, model_class: str = "dld_brain.lobes.ConformerCTC",
                   kind: str = "ctc", decoder: Optional[dict] = None) -> str:
    """The text of ``inference.yaml`` for a model of ``model_class`` (``kind``: ctc / classifier) trained
    with ``hparams``; the model arguments are written as JSON values (valid YAML: null, true, nested maps).
    ``decoder``: a CTC bundle's decoding settings (see :func:`decoding_yaml`; default greedy)."""
    output_key, output_class, output_file, interface, call = _OUTPUTS[kind]
    features, rate = features_yaml(hparams)
    config = dict(model_config, drop_prob=0.0)  # inference: no random gates
    args = "\n".join(f"    {k}: {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in config.items())
    parts = decoding_yaml(decoder) if kind == "ctc" else {
        "decoding": "", "extra_modules": "", "extra_loadables": "", "extra_paths": ""}
    return _TEMPLATE.format(
        sample_rate=rate, blank_index=hparams.get("blank_index", 0), method=hparams.get("method", "model"),
        features=features, model_args=args, model_class=model_class, output_key=output_key,
        output_class=output_class, output_file=output_file, interface=interface, call=call, **parts)


def bundle_decoder(hparams: dict, tokenizer_file: Union[str, Path], folder: Path) -> dict:
    """Copy the recipe's decoding files into the bundle (``lexicon_file.ckpt``: the lexicon, from
    ``lexicon: auto`` = the training words, or the given file; ``lm_file.ckpt``: the KenLM model, ARPA or
    binary) and return the bundle's decoder settings."""
    import sentencepiece

    settings = decoder_settings(hparams)
    if not settings["beam_size"]:
        return dict(settings, beam_size=0, lexicon=None, lm_path=None)
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file))
    lexicon = resolve_lexicon(hparams, tokenizer, folder)
    if lexicon is not None:
        shutil.copyfile(lexicon, folder / "lexicon_file.ckpt")
        if Path(lexicon).parent.resolve() == folder.resolve():
            Path(lexicon).unlink()
    lm = settings["lm_path"]
    if lm:
        if not Path(lm).is_file():
            raise DecoderConfigError(f"lm_path: {lm} does not exist (a KenLM .arpa or .bin file)")
        shutil.copyfile(lm, folder / "lm_file.ckpt")
    return dict(settings, lexicon="lexicon_file.ckpt" if lexicon is not None else None,
                lm_path="lm_file.ckpt" if lm else None)


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
    decoder = bundle_decoder(hparams, output_map_file, folder) if kind == "ctc" else None
    text = inference_yaml(hparams, config, model_class, kind, decoder)
    (folder / INFERENCE_YAML).write_text(text)
    (folder / STOCK_YAML).write_text(text)  # the name SpeechBrain's from_hparams looks for by default
    save_weights(model.state_dict(), folder / "model.ckpt")  # safetensors: cannot carry code
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


class _FrontEnd(torch.nn.Module):
    """Edge graph 1: ``(feats, wav_lens) -> (x, pad_mask, pos_embs)``, the encoder input, its padding mask
    and the relative positional encodings every layer reads."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, wav_lens: torch.Tensor):
        x, pad_mask = self.model.embed(feats, wav_lens)
        return x, pad_mask, self.model.pos_enc(x)


class _Layer(torch.nn.Module):
    """Edge graph per layer: ``(x, pad_mask, pos_embs) -> x`` through one conformer layer."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor, pos_embs: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_mask=None, src_key_padding_mask=pad_mask, pos_embs=pos_embs)[0]


class _Head(torch.nn.Module):
    """Edge graph last: ``x -> log_probs``, the encoder's final norm, CTC head and log-softmax."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.output(self.model.encoder.norm(x))


def _onnx(module: torch.nn.Module, example: tuple, path: Path, inputs: list, outputs: list, axes: dict) -> None:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), input_names=inputs, output_names=outputs,
                          opset_version=17, dynamo=False, dynamic_axes=axes)


def feature_arrays(compute_features: torch.nn.Module, normalize: torch.nn.Module) -> tuple[dict, dict]:
    """The trained front-end as plain numbers for :class:`dld_brain.edge.NumpyFbank`: (settings for
    ``edge.json``, arrays for ``features.npz``: the STFT window padded to n_fft as ``torch.stft`` applies it,
    the mel matrix, and the global normaliser statistics if any)."""
    stft, fb = compute_features.compute_STFT, compute_features.compute_fbanks
    if compute_features.deltas or compute_features.context or not stft.center or stft.pad_mode != "constant":
        raise ValueError("edge export covers SpeechBrain's Fbank without deltas/context, centred STFT")
    left = (stft.n_fft - stft.win_length) // 2
    window = torch.zeros(stft.n_fft, dtype=torch.float64)
    window[left:left + stft.win_length] = stft.window.double()
    f_central = fb.f_central.repeat(fb.all_freqs_mat.shape[1], 1).transpose(0, 1)
    band = fb.band.repeat(fb.all_freqs_mat.shape[1], 1).transpose(0, 1)
    with torch.no_grad():
        matrix = fb._create_fbank_matrix(f_central, band)
    settings = dict(sample_rate=stft.sample_rate, n_fft=stft.n_fft, hop_length=stft.hop_length,
                    win_length=stft.win_length, n_mels=fb.n_mels, multiplier=fb.multiplier, amin=fb.amin,
                    db_multiplier=fb.db_multiplier, top_db=fb.top_db, log_mel=fb.log_mel)
    arrays = {"window": window.numpy(), "fbank_matrix": matrix.double().numpy()}
    norm = dict(norm_type=normalize.norm_type, std_norm=bool(normalize.std_norm), epsilon=normalize.epsilon)
    if normalize.norm_type == "global":
        arrays.update(glob_mean=normalize.glob_mean.double().numpy(), glob_std=normalize.glob_std.double().numpy())
    elif normalize.norm_type != "sentence":
        raise ValueError(f"normaliser {normalize.norm_type!r}: the edge runner supports sentence and global")
    return dict(features=settings, normalize=norm), arrays


def export_edge(model: torch.nn.Module, compute_features: torch.nn.Module, normalize: torch.nn.Module,
                pieces: list, folder: Union[str, Path], blank_index: int = 0, lexicon=None) -> Path:
    """Write the one-artifact edge export of a conformer CTC model (see :mod:`dld_brain.edge`): the front-end,
    each layer once and the head as separate ONNX graphs that :class:`dld_brain.edge.EdgeASR` chains in the
    order a depth chooses, plus the feature settings, mel matrix, normaliser and token strings (``pieces``,
    id -> SentencePiece piece), and ``lexicon.txt`` if ``lexicon`` (words) is given."""
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    n_mels = model.config["n_mels"]
    feats, lens = torch.randn(2, 200, n_mels), torch.tensor([1.0, 0.8])
    _onnx(_FrontEnd(model), (feats, lens), folder / "frontend.onnx", ["feats", "wav_lens"],
          ["x", "pad_mask", "pos_embs"], {"feats": {0: "batch", 1: "frames"}, "wav_lens": {0: "batch"},
                                          "x": {0: "batch", 1: "steps"}, "pad_mask": {0: "batch", 1: "steps"},
                                          "pos_embs": {1: "positions"}})
    with torch.no_grad():
        x, pad_mask, pos = _FrontEnd(model)(feats, lens)
    axes = {"x": {0: "batch", 1: "steps"}, "pad_mask": {0: "batch", 1: "steps"}, "pos_embs": {1: "positions"},
            "y": {0: "batch", 1: "steps"}}
    names = []
    for i, layer in enumerate(model.encoder.layers):
        names.append(f"layer_{i:02d}.onnx")
        _onnx(_Layer(layer), (x, pad_mask, pos), folder / names[-1], ["x", "pad_mask", "pos_embs"], ["y"], axes)
    _onnx(_Head(model), (x,), folder / "head.onnx", ["x"], ["log_probs"],
          {"x": {0: "batch", 1: "steps"}, "log_probs": {0: "batch", 1: "steps"}})
    settings, arrays = feature_arrays(compute_features, normalize)
    np.savez(folder / "features.npz", **arrays)
    meta = dict(format="dld-brain edge 1", sample_rate=settings["features"]["sample_rate"],
                blank_index=int(blank_index), depth_policy=model.encoder.depth_policy,
                num_layers=model.encoder.num_layers, pieces=list(pieces),
                graphs={"frontend": "frontend.onnx", "layers": names, "head": "head.onnx"}, **settings)
    (folder / "edge.json").write_text(json.dumps(meta, indent=1))
    if lexicon is not None:
        (folder / "lexicon.txt").write_text("\n".join(sorted(set(lexicon))) + "\n")
    return folder


def quantize_edge(folder: Union[str, Path], out: Union[str, Path], ops=("MatMul", "Gemm")) -> Path:
    """int8 dynamic quantisation (onnxruntime's ``quantize_dynamic``: int8 weights, activations quantised
    per call) of every graph of an edge artifact into ``out``, a complete artifact of its own.

    ``ops``: the operator types quantised (None: all onnxruntime can). The default leaves the convolutions in
    fp32: ``benchmarks/edge_latency.py`` times both and quantised convolutions (ConvInteger) are slower on
    CPU than fp32 ones."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns about every integer tensor it skips
    try:
        for item in sorted(folder.iterdir()):
            if item.suffix == ".onnx":
                quantize_dynamic(str(item), str(out / item.name), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=list(ops) if ops else None)
            elif item.is_file():
                shutil.copyfile(item, out / item.name)
    finally:
        logging.getLogger().setLevel(quiet)
    return out


def lexicon_words(path: Union[str, Path]) -> list:
    """Words for the edge lexicon: the ``wrd`` column of a CSV manifest, or any whitespace-separated text."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--lexicon {path}: no such file (give a word list or a manifest CSV with a wrd column)")
    if path.suffix == ".csv":
        import csv

        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "wrd" not in rows[0]:
            raise SystemExit(f"--lexicon {path}: a CSV needs a 'wrd' column (a dld-brain manifest)")
        return sorted({w for row in rows for w in row["wrd"].split()})
    return sorted(set(path.read_text().split()))


def main(argv=None) -> None:
    """CLI: ``python -m dld_brain.export --model BUNDLE --depths 2 4 6 --formats onnx torchscript``."""
    import argparse

    parser = argparse.ArgumentParser(description="Export the encoder + CTC head at fixed depths "
                                     "(one file per depth) from an inference bundle.")
    parser.add_argument("--model", required=True, help="inference bundle folder (<run>/inference)")
    parser.add_argument("--depths", type=int, nargs="+", help="depths to export (default: all)")
    parser.add_argument("--formats", nargs="+", default=["onnx"], choices=["onnx", "torchscript"])
    parser.add_argument("--out", help="output folder (default: <model>/export)")
    parser.add_argument("--edge", help="write instead the one-artifact edge export (any depth at run time, "
                        "audio in, words out, no torch; see dld_brain.edge) into this folder")
    parser.add_argument("--quantize", action="store_true", help="with --edge: also write <edge>_int8 "
                        "(int8 dynamic quantisation)")
    parser.add_argument("--lexicon", help="with --edge: word list (text, or a manifest CSV's wrd column) "
                        "stored for lexicon-constrained decoding")
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
    if args.edge:
        words = lexicon_words(args.lexicon) if args.lexicon else None
        sp = asr.hparams.tokenizer
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        edge = export_edge(model, asr.hparams.compute_features, asr.mods.normalize, pieces, args.edge,
                           asr.hparams.blank_index, words)
        print(f"edge artifact ({model.encoder.num_layers} layers, any depth): {edge}")
        if args.quantize:
            print(f"int8: {quantize_edge(edge, Path(str(edge) + '_int8'))}")
        return
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
