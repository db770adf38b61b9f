"""Convert a CTranslate2 Whisper model (``model.bin`` + ``config.json`` + ``tokenizer.json``, as shipped by
faster-whisper style packages) to transformers' :class:`~transformers.WhisperForConditionalGeneration`.

The CTranslate2 binary format (version 6, ``WhisperSpec``) is read directly with NumPy (no ctranslate2
needed): fused QKV projections are split (Whisper's key projection has no bias: CTranslate2 stores zeros
there), and the decoder projection is tied to the token embeddings, as in transformers. The decoding
settings (suppressed tokens, begin-suppressed tokens) come from the model's ``config.json``.

Usage: ``python -m dld_brain.whisper_convert CT2_DIR OUT_DIR`` (or :func:`convert_ct2_whisper`). The
faithfulness check (same greedy transcripts as CTranslate2 on real audio) is in
``recipes/Whisper/check_conversion.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
from pathlib import Path
from typing import Union

import numpy as np
import torch

CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
#: Whisper's special tokens (English-only models).
EN_SPECIAL = {"eot": 50256, "sot": 50257, "no_timestamps": 50362}


class ConversionError(ValueError):
    """The CTranslate2 folder is not a Whisper model this converter understands; the message says why."""


def read_ct2_model(path: Union[str, Path]) -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 ``model.bin``: returns (spec name, {variable name: array}), aliases resolved."""
    data = Path(path).read_bytes()
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)[0]
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = unpack("H")
        value = data[offset:offset + length - 1].decode("utf-8")
        offset += length
        return value

    version = unpack("I")
    if version != 6:
        raise ConversionError(f"{path}: CTranslate2 binary version {version}; this reader supports version 6")
    spec = string()
    unpack("I")  # spec revision
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype = np.dtype(CT2_DTYPES[unpack("B")])
        nbytes = unpack("I")
        variables[name] = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
        offset += nbytes
    for _ in range(unpack("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec, variables


def _t(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.int8:
        raise ConversionError("int8-quantised CTranslate2 weights are not supported (convert a float model)")
    return torch.from_numpy(np.array(array, dtype=np.float32))


def ct2_to_hf_state_dict(v: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict]:
    """Map CTranslate2 Whisper variables to a transformers state dict; returns (state dict, config kwargs)."""
    d_model = v["encoder/conv1/weight"].shape[0]
    n_enc = len({m.group(1) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    n_dec = len({m.group(1) for k in v if (m := re.match(r"decoder/layer_(\d+)/", k))})
    sd: dict[str, torch.Tensor] = {}

    def copy_ln(dst: str, src: str):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = _t(v[f"{src}/gamma"]), _t(v[f"{src}/beta"])

    def copy_lin(dst: str, src: str):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = _t(v[f"{src}/weight"]), _t(v[f"{src}/bias"])

    def split_qkv(dst: str, weight: np.ndarray, bias: np.ndarray, parts: tuple[str, ...]):
        for i, name in enumerate(parts):
            sd[f"{dst}.{name}.weight"] = _t(weight[i * d_model:(i + 1) * d_model])
            if name != "k_proj":
                sd[f"{dst}.{name}.bias"] = _t(bias[i * d_model:(i + 1) * d_model])
            elif np.abs(bias[i * d_model:(i + 1) * d_model].astype(np.float32)).max() > 0:
                raise ConversionError("CTranslate2 key bias is non-zero: not a Whisper attention layer")

    sd["model.encoder.conv1.weight"], sd["model.encoder.conv1.bias"] = _t(v["encoder/conv1/weight"]), _t(v["encoder/conv1/bias"])
    sd["model.encoder.conv2.weight"], sd["model.encoder.conv2.bias"] = _t(v["encoder/conv2/weight"]), _t(v["encoder/conv2/bias"])
    sd["model.encoder.embed_positions.weight"] = _t(v["encoder/position_encodings/encodings"])
    def copy_self_attention_and_ffn(dst: str, src: str):
        """The parts every encoder and decoder layer has: self-attention, its norm, the feed-forward block."""
        att = f"{src}/self_attention"
        split_qkv(f"{dst}.self_attn", v[f"{att}/linear_0/weight"], v[f"{att}/linear_0/bias"], ("q_proj", "k_proj", "v_proj"))
        copy_lin(f"{dst}.self_attn.out_proj", f"{att}/linear_1")
        copy_ln(f"{dst}.self_attn_layer_norm", f"{att}/layer_norm")
        copy_lin(f"{dst}.fc1", f"{src}/ffn/linear_0")
        copy_lin(f"{dst}.fc2", f"{src}/ffn/linear_1")
        copy_ln(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    for i in range(n_enc):
        copy_self_attention_and_ffn(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    copy_ln("model.encoder.layer_norm", "encoder/layer_norm")
    sd["model.decoder.embed_tokens.weight"] = _t(v["decoder/embeddings/weight"])
    sd["model.decoder.embed_positions.weight"] = _t(v["decoder/position_encodings/encodings"])
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        copy_self_attention_and_ffn(dst, src)
        cross = f"{src}/attention"  # the decoder's cross-attention on the encoder output
        copy_lin(f"{dst}.encoder_attn.q_proj", f"{cross}/linear_0")
        split_qkv(f"{dst}.encoder_attn", v[f"{cross}/linear_1/weight"], v[f"{cross}/linear_1/bias"], ("k_proj", "v_proj"))
        copy_lin(f"{dst}.encoder_attn.out_proj", f"{cross}/linear_2")
        copy_ln(f"{dst}.encoder_attn_layer_norm", f"{cross}/layer_norm")
    copy_ln("model.decoder.layer_norm", "decoder/layer_norm")
    config = dict(
        vocab_size=v["decoder/embeddings/weight"].shape[0], num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model, encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0]),
        decoder_attention_heads=int(np.asarray(v["decoder/num_heads"]).reshape(-1)[0]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
    )
    return sd, config


def convert_ct2_whisper(ct2_dir: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """Write ``out_dir`` (transformers model + tokenizer.json + ``decoding.json``) from a CTranslate2 Whisper
    folder; skips the work when ``out_dir`` already holds a finished conversion. Returns ``out_dir``."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if (out_dir / "CONVERTED").is_file():
        return out_dir
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise ConversionError(f"{ct2_dir} has no {name}: not a CTranslate2 Whisper folder")
    spec, variables = read_ct2_model(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ConversionError(f"{ct2_dir / 'model.bin'} holds a {spec}, not a WhisperSpec")
    state, config_kwargs = ct2_to_hf_state_dict(variables)
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    if config_kwargs["vocab_size"] != 51864:
        raise ConversionError(f"vocabulary of {config_kwargs['vocab_size']} tokens: a multilingual Whisper; only "
                              ".en models (51864 tokens) are supported (their prompt is fixed)")
    config = WhisperConfig(**config_kwargs, pad_token_id=EN_SPECIAL["eot"], bos_token_id=EN_SPECIAL["eot"],
                           eos_token_id=EN_SPECIAL["eot"], decoder_start_token_id=EN_SPECIAL["sot"],
                           suppress_tokens=ct2_config.get("suppress_ids"),
                           begin_suppress_tokens=ct2_config.get("suppress_ids_begin"))
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise ConversionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / "tokenizer.json").write_bytes((ct2_dir / "tokenizer.json").read_bytes())
    decoding = {"prompt": [EN_SPECIAL["sot"], EN_SPECIAL["no_timestamps"]],
                "eot": EN_SPECIAL["eot"], "suppress_ids": ct2_config.get("suppress_ids", []),
                "suppress_ids_begin": ct2_config.get("suppress_ids_begin", []), "source": str(ct2_dir)}
    (out_dir / "decoding.json").write_text(json.dumps(decoding, indent=1))
    (out_dir / "CONVERTED").write_text("ok\n")
    return out_dir


def main(argv=None) -> None:
    """CLI: convert a CTranslate2 Whisper folder to a transformers folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ct2_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    print(convert_ct2_whisper(args.ct2_dir, args.out_dir))


if __name__ == "__main__":
    main()
