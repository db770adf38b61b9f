"""Gated WavLM backbone: equivalence with HF transformers' WavLMModel, truly skipped layers (and the relative
position bias when layer 0 is skipped), executed parameters, save/load and local-folder loading, two
optimizers, teacher freezing, and the FSDD recipe end to end with a tiny randomly initialised WavLM."""

import copy
import importlib.util

import pandas as pd
import pytest
import speechbrain as sb
import torch
from conftest import REPO, tiny
from transformers import WavLMConfig, WavLMModel

from dld_brain.gates import DepthError
from dld_brain.hparams import HparamsError, load_hparams
from dld_brain.export import main as export_main
from dld_brain.inference import DynamicDepthASR
from dld_brain.lobes import GatedWavLMEncoder, WaveformNormalization, WavLMCTC, executed_parameters
from dld_brain.lobes.wavlm import WavLMLoadError
from dld_brain.recipe import run_asr_recipe
from dld_brain.teacher import TeacherError, find_checkpoint, load_teacher

#: a few-kB WavLM: 3 layers, hidden 32, 3 conv layers (80x downsampling)
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                   num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, num_buckets=16,
                   max_bucket_distance=32, mask_time_prob=0.0)
#: the post-LN, group-norm layout of wavlm-base(-plus) and the pre-LN, layer-norm one of wavlm-large
LAYOUTS = {"base": dict(feat_extract_norm="group", do_stable_layer_norm=False),
           "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True)}


def gated(layout="base", seed=0, **kw):
    torch.manual_seed(seed)
    return GatedWavLMEncoder(config={**TINY_CONFIG, **LAYOUTS[layout]}, **kw)


def reference_of(encoder):
    """The unmodified transformers model holding the same weights."""
    ref = WavLMModel(WavLMConfig(**encoder.wavlm.config.to_dict()))
    ref.load_state_dict(encoder.wavlm.state_dict())
    return ref.eval()


def batch(seed=1):
    """Two waveforms, the second padded (70 % valid); relative lengths and HF's sample-level mask."""
    gen = torch.Generator().manual_seed(seed)
    wavs = torch.randn(2, 4000, generator=gen)
    wavs[1, 2800:] = 0.0
    lens = torch.tensor([1.0, 0.7])
    mask = (torch.arange(4000)[None, :] < torch.tensor([4000, 2800])[:, None]).long()
    return wavs, lens, mask


# ---- gating equivalence -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_all_gates_on_equals_transformers(layout):
    enc = gated(layout, drop_prob=0.5, freeze_feature_encoder=False).eval()
    ref = reference_of(enc)
    wavs, lens, mask = batch()
    with torch.no_grad():
        ours = enc(wavs, lens)
        theirs = ref(wavs, attention_mask=mask).last_hidden_state
        assert torch.allclose(ours, theirs, atol=1e-6), (ours - theirs).abs().max()
        unmasked = GatedWavLMEncoder.forward(enc, wavs)  # no lengths = no attention mask, as in HF
        assert torch.allclose(unmasked, ref(wavs).last_hidden_state, atol=1e-6)
        assert enc.last_layers == [0, 1, 2]


class _BiasOnlyLayer(torch.nn.Module):
    """Stands for a skipped layer 0 in a plain HF model: passes the states on, but produces the position
    bias the way HF's layer 0 does (the bias the later layers were trained with)."""

    def __init__(self, layer):
        super().__init__()
        self.attention = layer.attention

    def forward(self, hidden_states, attention_mask=None, position_bias=None, **kwargs):
        bsz, frames, _ = hidden_states.shape
        bias = self.attention.compute_bias(frames, frames)
        bias = bias.unsqueeze(0).repeat(bsz, 1, 1, 1).view(bsz * self.attention.num_heads, frames, frames)
        return hidden_states, bias


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_skipping_layer_0_keeps_the_relative_position_bias(layout):
    enc = gated(layout, drop_prob=0.0).eval()
    ref = reference_of(enc)
    ref.encoder.layers[0] = _BiasOnlyLayer(ref.encoder.layers[0])
    wavs, lens, mask = batch()
    with torch.no_grad():
        ours = enc(wavs, lens, layers=[1, 2])
        assert torch.allclose(ours, ref(wavs, attention_mask=mask).last_hidden_state, atol=1e-6)
        # without the bias the output would differ: the bias really is used by layers 1 and 2
        enc.layers[0].attention.rel_attn_embed.weight.normal_(0.0, 3.0)  # (a constant shift would not show)
        assert not torch.allclose(enc(wavs, lens, layers=[1, 2]), ours, atol=1e-4)


def test_transformers_layerdrop_is_disabled():
    torch.manual_seed(0)
    enc = GatedWavLMEncoder(config={**TINY_CONFIG, "layerdrop": 0.9}, drop_prob=0.0).train()
    assert enc.wavlm.config.layerdrop == 0.0
    calls = []
    for i, layer in enumerate(enc.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    for _ in range(5):
        enc(batch()[0])
    assert calls == [0, 1, 2] * 5  # every layer runs every time: only our gates may skip


def test_latent_time_and_channel_masking_in_training_only():
    torch.manual_seed(0)
    enc = GatedWavLMEncoder(config={**TINY_CONFIG, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                                    "activation_dropout": 0.0, "feat_proj_dropout": 0.0},
                            config_overrides={"mask_time_prob": 0.5, "mask_time_length": 2, "mask_feature_prob": 0.3},
                            drop_prob=0.0)
    wavs, lens, _ = batch()
    with torch.no_grad():
        masked = enc.train()(wavs, lens)
        clean = enc.eval()(wavs, lens)
        assert not torch.allclose(masked, clean) and torch.equal(clean, enc(wavs, lens))


# ---- truly skipped layers ------------------------------------------------------------------------


def test_skipped_layers_are_not_run_and_absent_from_the_graph():
    model = WavLMCTC(vocab_size=6, config=TINY_CONFIG, drop_prob=0.5, gate_seed=3, freeze_feature_encoder=True)
    model.train()
    enc = model.encoder
    called = []
    for i, layer in enumerate(enc.layers):
        layer.register_forward_hook(lambda *_, i=i: called.append(i))
    wavs, lens, _ = batch()
    seen_without_0 = False
    for _ in range(8):
        called.clear()
        model.zero_grad(set_to_none=True)
        model(wavs, lens).sum().backward()
        run = enc.last_layers
        assert called == run
        for i, layer in enumerate(enc.layers):
            grads = [p.grad for name, p in layer.named_parameters() if "rel_attn_embed" not in name]
            assert all((g is not None) == (i in run) for g in grads), (i, run)
        # the relative position table is used whatever layers run (see dld_brain.lobes.wavlm)
        assert (enc.layers[0].attention.rel_attn_embed.weight.grad is not None) == bool(run)
        seen_without_0 |= 0 not in run
        # frozen feature encoder: no gradient, ever
        assert all(p.grad is None and not p.requires_grad for p in enc.wavlm.feature_extractor.parameters())
    assert seen_without_0
    assert enc.gate_sampler.draws == 8


def test_depth_control_and_errors():
    enc = gated(drop_prob=0.5).eval()
    assert enc.set_depth(1) == [2] and enc.set_depth(2, policy="first") == [0, 1]
    wavs, lens, _ = batch()
    with enc.at_depth(layers=[0, 2]):
        enc(wavs, lens)
        assert enc.last_layers == [0, 2]
    with pytest.raises(DepthError, match="out of range: this encoder has 3 layers"):
        enc.set_depth(4)
    with pytest.raises(DepthError, match="unknown depth_policy"):
        gated(depth_policy="middle")


def test_executed_parameters_per_depth():
    model = WavLMCTC(vocab_size=6, config=TINY_CONFIG)
    enc = model.encoder
    total = sum(p.numel() for p in model.parameters())
    table = enc.layers[0].attention.rel_attn_embed.weight.numel()
    full = executed_parameters(model)
    assert full["total"] == total
    per_layer, shared = enc.parameter_counts()
    assert sum(per_layer) + shared == full["encoder"]
    counts = [executed_parameters(model, enc.set_depth(d))["encoder"] for d in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2] == full["encoder"]
    # layer 0 skipped: its relative position table is still executed (and counted once)
    without_0 = executed_parameters(model, [1, 2])
    layer0 = sum(p.numel() for p in enc.layers[0].parameters())
    assert without_0["encoder"] == full["encoder"] - layer0 + table
    assert without_0["total"] == total - layer0 + table


# ---- save / load -----------------------------------------------------------------------------------


def test_save_load_round_trip_and_local_folder(tmp_path):
    torch.manual_seed(0)
    model = WavLMCTC(vocab_size=6, config=TINY_CONFIG, drop_prob=0.5).eval()
    torch.save(model.state_dict(), tmp_path / "model.ckpt")
    torch.manual_seed(1)
    other = WavLMCTC(vocab_size=6, config=TINY_CONFIG, drop_prob=0.5).eval()
    wavs, lens, _ = batch()
    with torch.no_grad():
        assert not torch.allclose(model(wavs, lens), other(wavs, lens))
        other.load_state_dict(torch.load(tmp_path / "model.ckpt"))
        for depth in (1, 2, 3):
            with model.encoder.at_depth(depth), other.encoder.at_depth(depth):
                assert torch.equal(model(wavs, lens), other(wavs, lens))
    # the HF backbone through a local folder (how a machine without the hub loads microsoft/wavlm-base-plus)
    model.encoder.wavlm.save_pretrained(tmp_path / "wavlm")
    local = WavLMCTC(vocab_size=6, local_folder=str(tmp_path / "wavlm"), num_layers=3).eval()
    local.ctc_head.load_state_dict(model.ctc_head.state_dict())
    with torch.no_grad():
        assert torch.allclose(local(wavs, lens), model(wavs, lens), atol=1e-6)
    assert local.encoder.wavlm.config.layerdrop == 0.0
    with pytest.raises(WavLMLoadError, match=r"wavlm_local_folder .*nowhere holds no WavLM"):
        WavLMCTC(vocab_size=6, local_folder=str(tmp_path / "nowhere"))
    with pytest.raises(WavLMLoadError, match="num_layers is 12 but .* has 3 transformer layers"):
        WavLMCTC(vocab_size=6, local_folder=str(tmp_path / "wavlm"), num_layers=12)


def test_teacher_of_another_depth_is_named(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    teacher = WavLMCTC(vocab_size=6, config=TINY_CONFIG)
    Checkpointer(tmp_path / "save", {"model": teacher, "normalize": WaveformNormalization()}).save_checkpoint()
    student = {"model": WavLMCTC(vocab_size=6, config={**TINY_CONFIG, "num_hidden_layers": 2}),
               "normalize": WaveformNormalization()}
    with pytest.raises(TeacherError, match="has 3 encoder layers but the student has 2"):
        load_teacher(student, tmp_path)
    frozen, _ = load_teacher({"model": WavLMCTC(vocab_size=6, config=TINY_CONFIG),
                              "normalize": WaveformNormalization()}, tmp_path)
    assert not frozen["model"].training and not any(p.requires_grad for p in frozen["model"].parameters())


def test_waveform_normalisation_ignores_padding():
    wavs, lens, _ = batch()
    wavs = wavs * 3 + 1
    wavs[1, 2800:] = 0
    out = WaveformNormalization()(wavs, lens)
    assert torch.allclose(out[1, :2800].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(out[1, :2800].std(unbiased=False), torch.tensor(1.0), atol=1e-4)
    assert torch.all(out[1, 2800:] == 0)
    assert torch.equal(WaveformNormalization(normalize=False)(wavs, lens), wavs)


# ---- LibriSpeech hparams (the command), with a local tiny WavLM instead of the hub ---------------


def test_librispeech_wavlm_hparams_build_from_a_local_folder(tmp_path):
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**TINY_CONFIG)).save_pretrained(tmp_path / "wavlm")
    hp = load_hparams(REPO / "hparams" / "dld_wavlm.yaml",
                      {"data_folder": str(tmp_path), "wavlm_local_folder": str(tmp_path / "wavlm"), "num_layers": 3})
    model = hp["model"]
    assert isinstance(model, WavLMCTC) and hp["method"] == "dld" and hp["kd_weight"] > 0
    assert model.encoder.drop_prob == 0.5 and model.encoder.wavlm.config.layerdrop == 0.0
    assert not any(p.requires_grad for p in model.encoder.wavlm.feature_extractor.parameters())  # frozen
    assert hp["brain_class"].__name__ == "WavLMCTCBrain"
    with pytest.raises(HparamsError, match="WavLMLoadError: wavlm_local_folder"):
        load_hparams(REPO / "hparams" / "dld_wavlm.yaml",
                     {"data_folder": str(tmp_path), "wavlm_local_folder": str(tmp_path / "missing")})


# ---- the FSDD recipe end to end with a tiny WavLM --------------------------------------------------------

TINY_WAVLM = "{hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, conv_dim: [16, 16, 16, 16, 16]}"


def recipe_args(method, root, fsdd_dir, **changes):
    return [str(REPO / "hparams" / "fsdd_wavlm" / f"{method}.yaml"), f"--experiment_root={root}",
            f"--data_folder={fsdd_dir}", f"--wavlm_config={TINY_WAVLM}", *tiny(num_layers=3, **changes)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fsdd_dir):
    """Teacher then DLD, WavLM from scratch, in-process on real FSDD audio (tiny model, one epoch each)."""
    root = tmp_path_factory.mktemp("fsdd_wavlm")
    spec = importlib.util.spec_from_file_location("fsdd_recipe_train", REPO / "recipes" / "FSDD" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    teacher = run_asr_recipe(recipe_args("teacher", root, fsdd_dir), recipe.prepare)
    dld = run_asr_recipe(recipe_args("dld", root, fsdd_dir), recipe.prepare)
    return root, teacher, dld


def test_fsdd_recipe_teacher_and_dld(trained):
    root, teacher, dld = trained
    for method in ("teacher", "dld"):
        sweep = pd.read_csv(root / method / "depth_sweep_test.csv")
        assert sweep["depth"].tolist() == [1, 2, 3]
        assert sweep["encoder_params"].is_monotonic_increasing and (sweep["WER"] >= 0).all()
        assert (root / method / "wer_test_n2.txt").is_file()
    assert "kd_loss" in (root / "dld" / "train_log.txt").read_text()
    # two optimizers: backbone and head, each checkpointed; the frozen-nothing backbone is all in one
    assert set(dld.optimizers_dict) == {"model_optimizer", "backbone_optimizer"}
    backbone = {id(p) for g in dld.backbone_optimizer.param_groups for p in g["params"]}
    head = {id(p) for g in dld.optimizer.param_groups for p in g["params"]}
    assert backbone == {id(p) for p in dld.model.encoder.parameters()}
    assert head == {id(p) for p in dld.model.ctc_head.parameters()}
    ckpt = find_checkpoint(root / "dld")
    assert (ckpt / "backbone_optimizer.ckpt").is_file() and (ckpt / "scheduler_backbone.ckpt").is_file()


def test_fsdd_dld_teacher_frozen_and_student_initialised_from_it(trained):
    root, _, dld = trained
    saved = torch.load(find_checkpoint(root / "teacher") / "model.ckpt")
    teacher = dld.teacher["model"]
    assert isinstance(teacher, WavLMCTC) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, saved[name]), f"teacher parameter {name} changed during student training"
    student = dld.model.state_dict()
    assert any(not torch.equal(student[n], saved[n]) for n in saved), "the student did not train"
    assert all(m is not teacher for m in dld.modules.values()) and "teacher" not in dld.checkpointer.recoverables
    # the teacher copy really is a separate module
    assert teacher is not dld.model and copy.deepcopy(teacher).encoder.num_layers == 3


def test_inference_bundle_rebuilds_the_wavlm_offline(trained):
    """The recipe's bundle describes the WavLM by its full configuration (no hub, no local folder) and gives
    the recipe's own log-probabilities at every depth."""
    root, _, dld = trained
    bundle = root / "dld" / "inference"
    text = (bundle / "inference.yaml").read_text()
    assert "source: null" in text and "local_folder: null" in text and "WaveformNormalization" in text
    asr = DynamicDepthASR.from_hparams(source=bundle)
    wav = pd.read_csv(root / "prepared" / "test.csv")["wav"].iloc[0]
    sig, lens = asr.read_audio(wav).unsqueeze(0), torch.ones(1)
    model = dld.model.eval()
    batch = type("B", (), {"sig": (sig, lens)})()
    for depth in (1, 2, 3):
        with torch.no_grad(), model.encoder.at_depth(depth):
            feats, feat_lens = dld.compute_features(batch, sb.Stage.TEST)
            want = model(feats, feat_lens)
            got = asr._log_probs(sig, lens, depth=depth)
        torch.testing.assert_close(got, want)
        assert isinstance(asr.transcribe_file(wav, depth=depth), str)


def test_export_cli_says_waveform_models_are_not_exported(trained, tmp_path, capsys):
    root, _, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--model", str(root / "dld" / "inference"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2  # a user error: one line on stderr, no traceback
    assert "reads raw waveforms" in capsys.readouterr().err
