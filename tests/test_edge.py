"""The edge artifact (issue 17): one exported folder, any depth chosen at run time, audio in, words out with
numpy + onnxruntime only. Checked against PyTorch at every depth on real FSDD audio with a tiny model
trained here; features against SpeechBrain's; the runner in a subprocess that refuses ``import torch``."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import speechbrain as sb
import torch
from conftest import REPO
from test_fsdd_recipe import load_recipe, recipe_args

from dld_brain.recipe import run_asr_recipe

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fsdd_dir):
    """A tiny teacher trained on real FSDD (2 epochs), its inference bundle and its edge artifact."""
    from dld_brain.export import main as export_main

    root = tmp_path_factory.mktemp("edge")
    run_asr_recipe(recipe_args("teacher", root, fsdd_dir, number_of_epochs=2), load_recipe().prepare)
    bundle = root / "teacher" / "inference"
    export_main(["--model", str(bundle), "--edge", str(root / "edge"), "--quantize",
                 "--lexicon", str(root / "prepared" / "train.csv")])
    return root


@pytest.fixture(scope="module")
def asr(model_dir):
    from dld_brain.inference import DynamicDepthASR

    return DynamicDepthASR.from_hparams(source=model_dir / "teacher" / "inference")


@pytest.fixture(scope="module")
def wavs(model_dir):
    return pd.read_csv(model_dir / "prepared" / "test.csv")["wav"].tolist()[:5]


def test_onnx_runtime_depth_artifact_equals_pytorch_at_every_depth(model_dir, asr, wavs):
    """Audio -> NumPy features -> chained graphs -> greedy text equals the PyTorch bundle at every depth, and
    only the chosen layers' graphs run."""
    from dld_brain.edge import EdgeASR

    edge = EdgeASR(model_dir / "edge", threads=1)
    greedy = asr.make_decoder(beam_size=0)  # the bundle decodes with a lexicon beam by default
    assert edge.num_layers == 4 and len(list((model_dir / "edge").glob("layer_*.onnx"))) == 4
    nonempty = 0
    for depth in range(1, 5):
        assert edge.layers_for(depth) == asr.layers_for(depth=depth)
        for wav in wavs:
            sig = edge.read_audio(wav)
            with torch.no_grad():
                ref = asr._log_probs(torch.from_numpy(sig)[None], torch.ones(1), depth=depth)[0].numpy()
            out = edge.log_probs(edge.features(sig), depth=depth)[0]
            assert edge.last_layers == asr.layers_for(depth=depth)
            assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-3
            text = edge.transcribe_file(wav, depth=depth)
            assert text == asr.transcribe_file(wav, depth=depth, decoder=greedy)
            nonempty += bool(text)
    assert nonempty > 0, "the tiny model emits nothing: the comparison would be vacuous"


def test_onnx_runtime_depth_numpy_fbank_equals_speechbrain(model_dir, asr, wavs):
    """NumPy Fbank + normaliser (sentence and global statistics) = SpeechBrain's within float tolerance."""
    from speechbrain.processing.features import InputNormalization

    from dld_brain.edge import EdgeASR, normalize

    edge = EdgeASR(model_dir / "edge")
    glob = InputNormalization(norm_type="global")
    for wav in wavs:
        sig = edge.read_audio(wav)
        with torch.no_grad():
            raw = asr.hparams.compute_features(torch.from_numpy(sig)[None])
            ref = asr.mods.normalize(raw, torch.ones(1))
        fbank = edge.fbank(sig)
        # dB values up to ~90 from a float32 STFT (torch) vs float64 (NumPy): agree to 0.01 dB
        assert fbank.shape == tuple(raw.shape[1:]) and np.abs(fbank - raw[0].numpy()).max() < 1e-2
        assert np.abs(edge.features(sig)[0] - ref[0].numpy()).max() < 1e-3
        glob.train()
        glob(raw, torch.ones(1))  # accumulate statistics
    glob.eval()
    with torch.no_grad():
        ref = glob(raw, torch.ones(1))[0].numpy()
    stats = dict(norm_type="global", std_norm=True, epsilon=glob.epsilon, glob_mean=glob.glob_mean.numpy(),
                 glob_std=glob.glob_std.numpy())
    assert np.abs(normalize(raw[0].numpy(), stats) - ref).max() < 1e-4


def test_onnx_runtime_depth_runner_imports_no_torch(model_dir, wavs, asr):
    """``python -m dld_brain.edge`` with ``import torch`` made to fail: transcripts equal PyTorch's, torch
    never loaded; a bad depth is one clear line."""
    guard = ("import sys\n"
             "class NoTorch:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' or name.startswith('torch.'):\n"
             "            raise ImportError('torch imported by the edge runner')\n"
             "sys.meta_path.insert(0, NoTorch())\n"
             "import runpy\n"
             "try:\n"
             "    runpy.run_module('dld_brain.edge', run_name='__main__')\n"
             "finally:\n"
             "    assert 'torch' not in sys.modules\n"
             "    print('TORCH_FREE', file=sys.stderr)\n")
    cmd = [sys.executable, "-c", guard, "--model", str(model_dir / "edge"), "--depth", "2", *wavs]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_FREE" in proc.stderr and "2 of 4 layers" in proc.stderr
    got = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [g[0] for g in got] == wavs
    greedy = asr.make_decoder(beam_size=0)  # the runner decodes greedily by default; the bundle: lexicon beam
    expected = [asr.transcribe_file(w, depth=2, decoder=greedy) for w in wavs]
    assert [g[1] if len(g) > 1 else "" for g in got] == expected
    bad = subprocess.run([*cmd[:5], "--depth", "9", wavs[0]], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-2] == \
        "error: depth 9 is out of range: this model has 4 layers (1..4)"


def test_onnx_runtime_depth_lexicon_decoder_outputs_only_words(model_dir, wavs):
    """Lexicon-constrained prefix search: every output word is in the lexicon, on real audio and on a case
    where greedy decoding spells a non-word."""
    from dld_brain.edge import EdgeASR, ctc_greedy, ctc_lexicon_search, tokens_to_text

    edge = EdgeASR(model_dir / "edge")
    words = set((model_dir / "edge" / "lexicon.txt").read_text().split())
    assert {"ONE", "SEVEN"} <= words  # the training manifest's words
    for depth in (1, 4):
        for wav in wavs:
            text = edge.transcribe_file(wav, depth=depth, decoder="lexicon")
            assert all(w in words for w in text.split()), text
    pieces = ["<blank>", "\u2581", "o", "n", "e", "t", "w"]
    ids = {p: i for i, p in enumerate(pieces)}
    path = ["\u2581", "o", "<blank>", "n", "o"]  # greedy: "ono"; "one" is second best in the last frame
    lp = np.full((len(path), len(pieces)), np.log(0.02))
    for t, p in enumerate(path):
        lp[t, ids[p]] = np.log(0.7)
    lp[4, ids["e"]] = np.log(0.2)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    assert tokens_to_text(ctc_greedy(lp), pieces) == "ono"
    assert tokens_to_text(ctc_lexicon_search(lp, pieces, ["one", "two"]), pieces) == "one"
    assert tokens_to_text(ctc_lexicon_search(lp, pieces, ["ono", "one"]), pieces) == "ono"  # greedy if allowed


def test_onnx_runtime_depth_int8_smaller_and_close(model_dir, wavs):
    """The int8 artifact is a complete artifact, smaller on disk, and its log-probabilities stay close."""
    from dld_brain.edge import EdgeASR

    def size(folder):
        return sum(f.stat().st_size for f in folder.glob("*.onnx"))

    fp32, int8 = model_dir / "edge", model_dir / "edge_int8"
    assert json.loads((int8 / "edge.json").read_text()) == json.loads((fp32 / "edge.json").read_text())
    assert size(int8) < size(fp32)  # tiny layers are mostly non-MatMul bytes; see the README for FSDD size
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(int8 / "layer_00.onnx")).graph
    weights = {i.name for i in graph.initializer}
    assert any(n.op_type == "MatMulInteger" for n in graph.node)
    # every product with a weight matrix runs in int8 (those left are activation x activation: attention)
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and set(n.input) & weights]
    a, b = EdgeASR(fp32), EdgeASR(int8)
    for wav in wavs[:2]:
        feats = a.features(a.read_audio(wav))
        for depth in (1, 4):
            pa, pb = np.exp(a.log_probs(feats, depth=depth)), np.exp(b.log_probs(feats, depth=depth))
            assert pa.shape == pb.shape and np.abs(pa - pb).mean() < 0.05


def test_onnx_runtime_depth_layer_choice_equals_gates():
    """The torch-free layer selection equals dld_brain.gates.select_layers for every N, n and policy."""
    from dld_brain.edge import edge_layers
    from dld_brain.gates import select_layers

    for n_layers in range(1, 13):
        for depth in range(1, n_layers + 1):
            for policy in ("even", "first", "last"):
                assert edge_layers(n_layers, depth, policy=policy) == select_layers(n_layers, depth, policy=policy)
