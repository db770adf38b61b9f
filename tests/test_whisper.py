"""Whisper compression: the student with all teacher layers reproduces the teacher, chosen layers are copied,
the CTranslate2 converter is exact (round trip through a CTranslate2-format file), the normaliser, and
(when a converted tiny.en is cached by the recipe) the real teacher on real FSDD audio."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from dld_brain.whisper import greedy_decode, make_student, normalize_digits_text, WhisperSetupError
from dld_brain.whisper_convert import convert_ct2_whisper, read_ct2_model

transformers = pytest.importorskip("transformers")


def tiny_whisper(seed=0):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=120, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48, max_source_positions=20,
        max_target_positions=16, pad_token_id=100, bos_token_id=100, eos_token_id=100, decoder_start_token_id=101)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases and norms, so a misplaced tensor cannot go unnoticed
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                param.normal_(0, 0.3)
    return model


def test_student_with_all_layers_reproduces_teacher_logits():
    teacher = tiny_whisper()
    student = make_student(teacher)
    feats = torch.randn(2, 8, 40)
    tokens = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        out_t = teacher(input_features=feats, decoder_input_ids=tokens).logits
        out_s = student(input_features=feats, decoder_input_ids=tokens).logits
    assert torch.equal(out_t, out_s)
    decoding = {"prompt": [101], "eot": 100, "suppress_ids": [5, 6], "suppress_ids_begin": [7]}
    enc = teacher.model.encoder(feats).last_hidden_state
    assert greedy_decode(teacher, enc, decoding, 8) == greedy_decode(student, enc, decoding, 8)


def test_student_layers_come_from_the_chosen_teacher_layers():
    teacher = tiny_whisper()
    student = make_student(teacher, decoder_layers=[0, 2], encoder_layers=[1])
    assert student.config.decoder_layers == 2 and student.config.encoder_layers == 1
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.decoder.layers.1.fc1.weight"], t["model.decoder.layers.2.fc1.weight"])
    assert torch.equal(s["model.decoder.layers.0.encoder_attn.k_proj.weight"],
                       t["model.decoder.layers.0.encoder_attn.k_proj.weight"])
    assert torch.equal(s["model.encoder.layers.0.self_attn.q_proj.bias"], t["model.encoder.layers.1.self_attn.q_proj.bias"])
    assert torch.equal(s["model.decoder.embed_tokens.weight"], t["model.decoder.embed_tokens.weight"])
    assert torch.equal(student.proj_out.weight, student.model.decoder.embed_tokens.weight)  # still tied
    with pytest.raises(WhisperSetupError, match="decoder_layers"):
        make_student(teacher, decoder_layers=[0, 3])


def _write_ct2(path: Path, variables: dict) -> None:
    """Write variables in CTranslate2's binary format (version 6), as ctranslate2's converter does."""
    def string(s):
        return struct.pack("H", len(s) + 1) + s.encode() + b"\0"

    dtypes = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
    blob = struct.pack("I", 6) + string("WhisperSpec") + struct.pack("I", 3) + struct.pack("I", len(variables))
    for name, value in variables.items():
        value = np.asarray(value)
        blob += string(name) + struct.pack("B", value.ndim) + b"".join(struct.pack("I", d) for d in value.shape)
        blob += struct.pack("B", dtypes.index(value.dtype.name)) + struct.pack("I", value.nbytes) + value.tobytes()
    blob += struct.pack("I", 1) + string("decoder/projection/weight") + string("decoder/embeddings/weight")
    path.write_bytes(blob)


def _to_ct2(model) -> dict:
    """A transformers Whisper as CTranslate2 variables (fused QKV, zero key bias), float16 like shipped models."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    d = model.config.d_model
    v = {"encoder/num_heads": np.array(model.config.encoder_attention_heads, np.int16),
         "decoder/num_heads": np.array(model.config.decoder_attention_heads, np.int16)}
    zeros = np.zeros(d, np.float16)

    def ln(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def lin(dst, src):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    for conv in ("conv1", "conv2"):
        lin(f"encoder/{conv}", f"model.encoder.{conv}")
    v["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    v["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    for side, n in (("encoder", model.config.encoder_layers), ("decoder", model.config.decoder_layers)):
        ln(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(n):
            src, dst = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            att = f"{src}.self_attn"
            v[f"{dst}/self_attention/linear_0/weight"] = np.concatenate(
                [sd[f"{att}.{p}_proj.weight"] for p in "qkv"])
            v[f"{dst}/self_attention/linear_0/bias"] = np.concatenate(
                [sd[f"{att}.q_proj.bias"], zeros, sd[f"{att}.v_proj.bias"]])
            lin(f"{dst}/self_attention/linear_1", f"{att}.out_proj")
            ln(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            if side == "decoder":
                cross = f"{src}.encoder_attn"
                lin(f"{dst}/attention/linear_0", f"{cross}.q_proj")
                v[f"{dst}/attention/linear_1/weight"] = np.concatenate([sd[f"{cross}.k_proj.weight"],
                                                                         sd[f"{cross}.v_proj.weight"]])
                v[f"{dst}/attention/linear_1/bias"] = np.concatenate([zeros, sd[f"{cross}.v_proj.bias"]])
                lin(f"{dst}/attention/linear_2", f"{cross}.out_proj")
                ln(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
            lin(f"{dst}/ffn/linear_0", f"{src}.fc1")
            lin(f"{dst}/ffn/linear_1", f"{src}.fc2")
            ln(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
    return v


def test_ctranslate2_conversion_round_trip(tmp_path):
    original = tiny_whisper(seed=1)
    with torch.no_grad():  # the shipped weights are float16: compare against the float16-rounded model
        for param in original.parameters():
            param.copy_(param.half().float())
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    _write_ct2(ct2 / "model.bin", _to_ct2(original))
    (ct2 / "config.json").write_text('{"suppress_ids": [3], "suppress_ids_begin": [4]}')
    (ct2 / "tokenizer.json").write_text("{}")
    spec, variables = read_ct2_model(ct2 / "model.bin")
    assert spec == "WhisperSpec" and variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    with pytest.raises(ValueError, match="only .en"):  # a 120-token vocabulary is not an English-only Whisper
        convert_ct2_whisper(ct2, tmp_path / "hf")
    from dld_brain.whisper_convert import ct2_to_hf_state_dict

    state, config = ct2_to_hf_state_dict(variables)
    assert config["encoder_layers"] == 2 and config["decoder_layers"] == 3 and config["d_model"] == 32
    converted = transformers.WhisperForConditionalGeneration(original.config).eval()
    missing, unexpected = converted.load_state_dict(state, strict=False)
    assert set(missing) <= {"proj_out.weight"} and not unexpected
    feats, tokens = torch.randn(2, 8, 40), torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        ref = original(input_features=feats, decoder_input_ids=tokens).logits
        out = converted(input_features=feats, decoder_input_ids=tokens).logits
    assert torch.equal(ref, out)


def test_shared_normaliser():
    assert normalize_digits_text(" 3, 71.") == "THREE SEVEN ONE"
    assert normalize_digits_text("Five, four, oh!") == "FIVE FOUR ZERO"
    assert normalize_digits_text("TWO EIGHT") == "TWO EIGHT"


CONVERTED = REPO / "results" / "whisper" / "cache" / "converted"


def test_converted_tiny_en_on_real_audio():
    """The recipe's converted tiny.en (when cached) transcribes FSDD digits: 1-2 clips, a few seconds."""
    if not (CONVERTED / "CONVERTED").is_file():
        pytest.skip(f"no converted Whisper in {CONVERTED} (run recipes/Whisper/compress.py once)")
    import soundfile as sf
    import torchaudio

    from dld_brain.whisper import load_whisper, transcribe

    model, tokenizer, decoding = load_whisper(CONVERTED, CONVERTED.parent)
    clip = REPO.parent / "shared" / "data" / "fsdd" / "recordings" / "7_theo_0.wav"
    if not clip.is_file():
        pytest.skip("FSDD clip not found")
    audio, rate = sf.read(clip, dtype="float32")
    audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000)
    text = transcribe(model, tokenizer, decoding, [audio])[0]
    assert normalize_digits_text(text) == "SEVEN"
