"""Loading a trained model's inference bundle: same transcripts as the recipe's own decoding at every
depth, budget selection, input errors, and the command-line tool on real audio."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile
import speechbrain as sb
import torch
from conftest import REPO
from test_fsdd_recipe import trained  # noqa: F401  (module fixture: a tiny teacher + DLD on real FSDD)

from dld_brain.inference import BudgetError, DynamicDepthASR, InferenceInputError


@pytest.fixture(scope="module")
def asr(trained):  # noqa: F811
    root, _, _ = trained
    return DynamicDepthASR.from_hparams(source=root / "dld" / "inference")


def recipe_transcripts(brain, wavs, depth):
    """What the training recipe's own evaluation path decodes for each file alone."""
    out = []
    for wav in wavs:
        sig = torch.from_numpy(soundfile.read(wav, dtype="float32")[0]).unsqueeze(0)
        lens = torch.ones(1)
        batch = type("B", (), {"sig": (sig, lens)})()
        feats, lens = brain.compute_features(batch, sb.Stage.TEST)
        with brain.model.encoder.at_depth(depth), torch.no_grad():
            brain.model.eval()
            log_probs = brain.model(feats, lens)
        hyp = sb.decoders.ctc_greedy_decode(log_probs, lens, blank_id=0)[0]
        out.append(brain.tokenizer_decode(hyp))
    return out


def test_round_trip_same_transcripts_at_every_depth(trained, asr):  # noqa: F811
    root, _, dld = trained
    wavs = pd.read_csv(root / "prepared" / "test.csv")["wav"].tolist()[:6]
    greedy = asr.make_decoder(beam_size=0)
    for depth in range(1, 5):
        assert asr.transcribe_files(wavs, batch_size=1, depth=depth, decoder=greedy) == recipe_transcripts(
            dld, wavs, depth)


DIGIT_WORDS = {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"}


def test_lexicon_bundle_transcripts_are_digit_words_at_every_depth(trained, asr):  # noqa: F811
    """The FSDD bundle decodes with the digit-word lexicon by default: the tiny one-epoch model only ever
    produces digit words, at every depth and batched."""
    root, _, _ = trained
    wavs = pd.read_csv(root / "prepared" / "test.csv")["wav"].tolist()[:12]
    assert asr.decoder.beam_size > 0 and asr.decoder.lexicon is not None
    assert "ONE\tO N E" in (root / "dld" / "inference" / "lexicon_file.ckpt").read_text()
    words = []
    for depth in range(1, 5):
        for text in asr.transcribe_files(wavs, batch_size=4, depth=depth):
            assert set(text.split()) <= DIGIT_WORDS, (depth, text)
            words += text.split()
    assert words  # it does emit words
    sweep = pd.read_csv(root / "dld" / "depth_sweep_test.csv")
    assert {"WER", "WER_beam", "greedy_decode_ms", "beam_decode_ms"} <= set(sweep.columns)
    assert (sweep["beam_decode_ms"] > 0).all() and (root / "dld" / "wer_test_n2_beam.txt").is_file()


def test_encoder_asr_interop(trained, asr):  # noqa: F811
    """The bundle is a stock SpeechBrain model: EncoderASR loads it and gives DynamicDepthASR's full-depth
    transcripts (files and batches); transcribe_batch returns the same (words, tokens) pair."""
    from speechbrain.inference.ASR import EncoderASR

    root, _, _ = trained
    bundle = root / "dld" / "inference"
    stock = EncoderASR.from_hparams(source=str(bundle), savedir=str(bundle))
    wavs = pd.read_csv(root / "prepared" / "test.csv")["wav"].tolist()[:6]
    ours = asr.transcribe_files(wavs, batch_size=1)
    assert [stock.transcribe_file(w) for w in wavs] == ours
    assert all(set(t.split()) <= DIGIT_WORDS for t in ours)
    batch, lens = next(asr.padded_batches(wavs[:3], batch_size=3))
    words, tokens = stock.transcribe_batch(batch, lens)
    assert (words, tokens) == asr.transcribe_batch(batch, lens) == asr.transcribe_batch(batch, lens, depth=4)
    assert asr.transcribe_batch(batch, lens, depth=1)[0] != [] and len(asr.transcribe_batch(batch, lens)[1]) == 3
    assert type(stock.audio_normalizer).__name__ == "AudioNormalizer" == type(asr.audio_normalizer).__name__
    assert stock.audio_normalizer.sample_rate == asr.hparams.sample_rate == asr.audio_normalizer.sample_rate


def test_depth_changes_between_calls_and_budget_selection(asr, trained):  # noqa: F811
    root, _, _ = trained
    wav = pd.read_csv(root / "prepared" / "test.csv")["wav"].iloc[0]
    assert asr.layers_for(depth=2) == [1, 3] and asr.layers_for() == [0, 1, 2, 3]
    asr.transcribe_file(wav, depth=1)
    asr.transcribe_file(wav, layers=[0, 3])
    profile = {"depths": [{"depth": d, "latency_ms": 10.0 * d, "encoder_params": 100 * d} for d in range(1, 5)]}
    assert asr.depth_for_budget(max_latency_ms=25, profile=profile) == 2
    assert asr.depth_for_budget(max_latency_ms=1000, profile=profile) == 4
    with pytest.raises(BudgetError, match="cheapest, depth 1"):
        asr.depth_for_budget(max_latency_ms=5, profile=profile)
    per_layer = sum(p.numel() for p in asr.mods.model.encoder.layers[0].parameters())
    assert asr.depth_for_budget(max_params=3 * per_layer + 1000) == 3
    measured = asr.profile(seconds=1.0, repeats=1)
    assert [r["depth"] for r in measured["depths"]] == [1, 2, 3, 4]
    assert (root / "dld" / "inference" / "depth_profile.json").is_file()


def test_any_rate_stereo_and_bad_inputs(asr, trained, tmp_path):  # noqa: F811
    root, _, _ = trained
    wav = pd.read_csv(root / "prepared" / "test.csv")["wav"].iloc[0]
    audio, rate = soundfile.read(wav, dtype="float32")
    soundfile.write(tmp_path / "stereo44k.flac", np.stack([audio, audio], 1)[::1], rate, format="FLAC")
    import torchaudio

    up = torchaudio.functional.resample(torch.from_numpy(audio), rate, 44100).numpy()
    soundfile.write(tmp_path / "up.wav", np.stack([up, up], 1), 44100)
    assert asr.transcribe_file(tmp_path / "stereo44k.flac") == asr.transcribe_file(wav)
    assert isinstance(asr.transcribe_file(tmp_path / "up.wav"), str)
    soundfile.write(tmp_path / "short.wav", audio[:800], rate)
    soundfile.write(tmp_path / "silent.wav", np.zeros(16000, dtype="float32"), rate)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    for name, message in [("short.wav", "too short"), ("silent.wav", "silent"), ("broken.wav", "cannot read"),
                          ("missing.wav", "cannot read")]:
        with pytest.raises(InferenceInputError, match=message) as err:
            asr.transcribe_file(tmp_path / name)
        assert name in str(err.value)


def test_cli_on_real_audio(trained, tmp_path):  # noqa: F811
    root, _, _ = trained
    wavs = pd.read_csv(root / "prepared" / "test.csv")["wav"].tolist()[:6]
    cmd = [sys.executable, "-m", "dld_brain.transcribe", "--model", str(root / "dld" / "inference"),
           "--depth", "2", *wavs, str(tmp_path / "missing.wav")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and [line.split("\t")[0] for line in lines] == wavs
    assert "missing.wav" in proc.stderr and "2 of 4 layers" in proc.stderr
    bad = subprocess.run([*cmd[:5], "--depth", "9", wavs[0]], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "depth 9 is out of range" in bad.stderr
    help_text = subprocess.run([*cmd[:3], "--help"], capture_output=True, text=True, cwd=REPO).stdout
    assert "--budget-ms" in help_text and "--depth" in help_text and "--lexicon" in help_text
    greedy = subprocess.run([*cmd[:5], "--beam", "0", *wavs], capture_output=True, text=True, cwd=REPO)
    assert greedy.returncode == 0 and "greedy" in greedy.stderr and len(greedy.stdout.splitlines()) == len(wavs)
    lex = tmp_path / "two.lex"
    lex.write_text("ONE O N E\nTWO T W O\n")
    only = subprocess.run([*cmd[:5], "--beam", "5", "--lexicon", str(lex), *wavs], capture_output=True,
                          text=True, cwd=REPO)
    assert only.returncode == 0, only.stderr
    assert all(set(line.split("\t")[1].split()) <= {"ONE", "TWO"} for line in only.stdout.splitlines())
    missing = subprocess.run([*cmd[:5], "--lm", str(tmp_path / "none.arpa"), wavs[0]], capture_output=True,
                             text=True, cwd=REPO)
    assert missing.returncode == 2 and "none.arpa does not exist" in missing.stderr


def test_exported_onnx_and_torchscript_match_pytorch(asr, trained, tmp_path):  # noqa: F811
    ort = pytest.importorskip("onnxruntime")
    root, _, _ = trained
    from dld_brain.export import main as export_main

    export_main(["--model", str(root / "dld" / "inference"), "--formats", "onnx", "torchscript",
                 "--out", str(tmp_path)])
    wavs = pd.read_csv(root / "prepared" / "test.csv")["wav"].tolist()[:4]
    sigs = [asr.read_audio(w) for w in wavs]
    longest = max(s.numel() for s in sigs)
    batch = torch.stack([torch.nn.functional.pad(s, (0, longest - s.numel())) for s in sigs])
    lens = torch.tensor([s.numel() / longest for s in sigs])
    with torch.no_grad():
        feats = asr._features(batch, lens)
    for depth in range(1, 5):
        layers = asr.layers_for(depth=depth)
        with torch.no_grad():
            ref = asr.mods.model(feats, lens, layers=layers)
        session = ort.InferenceSession(str(tmp_path / f"encoder_ctc_n{depth}.onnx"))
        onnx_out = torch.from_numpy(session.run(None, {"feats": feats.numpy(), "wav_lens": lens.numpy()})[0])
        script_out = torch.jit.load(str(tmp_path / f"encoder_ctc_n{depth}.pt"))(feats, lens)
        for out in (onnx_out, script_out):
            assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-4)
            greedy = sb.decoders.ctc_greedy_decode(out, lens, blank_id=0)
            assert greedy == sb.decoders.ctc_greedy_decode(ref, lens, blank_id=0)
