"""Pretrained SpeechBrain models made dynamic (dld_brain.pretrained.make_dynamic): a TransformerASR built from
SpeechBrain's own LibriSpeech conformer recipe hyperparameters (transformer/hparams/conformer_large.yaml,
d_model etc. shrunk), randomly initialised: same weights, same outputs at full depth, depth switching,
skipped layers not called, and the CTC view used as DLD teacher/student."""

import copy

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from conftest import REPO

from dld_brain.lobes import GatedConformerEncoder
from dld_brain.lobes.transformer import GatedTransformerEncoder
from dld_brain.pretrained import (PretrainedModelError, TransformerCTC, ctc_model_from_interface, dynamic_encoders,
                                  make_dynamic)

# SpeechBrain's recipes/LibriSpeech/ASR/transformer/hparams/conformer_large.yaml model section, with
# d_model 512 -> 32, d_ffn 2048 -> 64, 12/6 layers -> 4/2, vocabulary 5000 -> 20.
SB_CONFORMER_YAML = """
d_model: 32
nhead: 4
num_encoder_layers: 4
num_decoder_layers: 2
d_ffn: 64
transformer_dropout: 0.1
activation: !name:torch.nn.GELU
output_neurons: 20
encoder_module: conformer
attention_type: RelPosMHAXL
CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd
    input_shape: (8, 10, 80)
    num_blocks: 2
    num_layers_per_block: 1
    out_channels: (64, 32)
    kernel_sizes: (3, 3)
    strides: (2, 2)
    residuals: (False, False)
Transformer: !new:speechbrain.lobes.models.transformer.TransformerASR.TransformerASR
    input_size: 640
    tgt_vocab: !ref <output_neurons>
    d_model: !ref <d_model>
    nhead: !ref <nhead>
    num_encoder_layers: !ref <num_encoder_layers>
    num_decoder_layers: !ref <num_decoder_layers>
    d_ffn: !ref <d_ffn>
    dropout: !ref <transformer_dropout>
    activation: !ref <activation>
    encoder_module: !ref <encoder_module>
    attention_type: !ref <attention_type>
    normalize_before: True
    causal: False
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <d_model>
    n_neurons: !ref <output_neurons>
seq_lin: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <d_model>
    n_neurons: !ref <output_neurons>
"""


def sb_model(encoder_module="conformer", attention_type="RelPosMHAXL"):
    torch.manual_seed(0)
    hp = load_hyperpyyaml(SB_CONFORMER_YAML, overrides={"encoder_module": encoder_module,
                                                        "attention_type": attention_type})
    for name in ("CNN", "Transformer", "ctc_lin", "seq_lin"):
        hp[name].eval()
    return hp


@pytest.fixture
def batch():
    torch.manual_seed(1)
    feats = torch.randn(2, 48, 80)
    lens = torch.tensor([1.0, 0.75])
    tokens = torch.randint(3, 20, (2, 5))
    return feats, lens, tokens


def encode(hp, feats, lens):
    return hp["Transformer"].encode(hp["CNN"](feats), lens)


def count_calls(encoder):
    calls = [0] * len(encoder.layers)
    for i, layer in enumerate(encoder.layers):
        layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("module,attention,gated_cls", [
    ("conformer", "RelPosMHAXL", GatedConformerEncoder),
    ("transformer", "regularMHA", GatedTransformerEncoder),
])
def test_make_dynamic_full_depth_identical(batch, module, attention, gated_cls):
    """Same state_dict (keys and tensors) and the same encoder and decoder outputs at full depth."""
    feats, lens, tokens = batch
    hp = sb_model(module, attention)
    reference = copy.deepcopy(hp)
    before = hp["Transformer"].state_dict()
    make_dynamic(hp["Transformer"])
    assert type(hp["Transformer"].encoder) is gated_cls
    after = hp["Transformer"].state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(encode(hp, feats, lens), encode(reference, feats, lens))
        src = hp["CNN"](feats)
        enc, dec = hp["Transformer"](src, tokens, lens)
        enc_ref, dec_ref = reference["Transformer"](reference["CNN"](feats), tokens, lens)
    assert torch.equal(enc, enc_ref) and torch.equal(dec, dec_ref)


@pytest.mark.parametrize("module,attention", [("conformer", "RelPosMHAXL"), ("transformer", "regularMHA")])
def test_make_dynamic_depth_switching_skips_layers(batch, module, attention):
    """at_depth(2) runs exactly the 2 chosen layers (the others are not called) and equals chaining those
    layers of the original encoder by hand."""
    feats, lens, _ = batch
    hp = sb_model(module, attention)
    reference = copy.deepcopy(hp)
    encoder = make_dynamic(hp["Transformer"]).encoder
    calls = count_calls(encoder)
    with torch.no_grad(), encoder.at_depth(2) as chosen:
        shallow = encode(hp, feats, lens)
    assert calls == [1 if i in chosen else 0 for i in range(4)] and len(chosen) == 2
    with torch.no_grad():
        full = encode(hp, feats, lens)
    assert calls == [2 if i in chosen else 1 for i in range(4)]
    assert not torch.allclose(shallow, full)
    # by hand: the original layers ``chosen``, then the final norm
    ref_encoder = reference["Transformer"].encoder
    captured = {}
    ref_encoder.register_forward_pre_hook(lambda m, args, kwargs: captured.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        encode(reference, feats, lens)
        out = captured["src"]
        for i in chosen:
            kwargs = {k: captured[k] for k in ("src_mask", "src_key_padding_mask", "pos_embs")}
            out, _ = ref_encoder.layers[i](out, **kwargs)
        expected = ref_encoder.norm(out)
    assert torch.allclose(shallow, expected, atol=1e-6)


def test_make_dynamic_ctc_view_as_dld_teacher_and_student(batch):
    """The CTC view (decoder dropped) gives the original model's CTC posteriors; a student copy with
    drop_prob 0.5 trains a CTC + KL step and skips layers; the teacher stays the pretrained model."""
    feats, lens, tokens = batch
    hp = sb_model()
    reference = copy.deepcopy(hp)
    parts = ctc_model_from_interface(hp)
    teacher = parts["model"]
    assert isinstance(teacher, TransformerCTC) and teacher.vocab_size == 20
    assert not any(k.startswith("decoder") or ".decoder." in k for k in teacher.state_dict())
    with torch.no_grad():
        expected = torch.log_softmax(reference["ctc_lin"](encode(reference, feats, lens)), dim=-1)
        assert torch.allclose(teacher(feats, lens), expected, atol=1e-6)
        with teacher.encoder.at_depth(1):
            shallow = teacher(feats, lens)
        assert teacher.encoder.last_layers and len(teacher.encoder.last_layers) == 1
    assert not torch.allclose(shallow, expected)
    student = copy.deepcopy(teacher).train()
    student.encoder.gate_sampler.drop_prob = 0.5
    student.encoder.gate_sampler.generator.manual_seed(1)  # draws layers [0, 3]
    for p in teacher.parameters():
        p.requires_grad_(False)
    from dld_brain.losses import ctc_posterior_kl
    from speechbrain.nnet.losses import ctc_loss

    log_probs = student(feats, lens)
    ran = list(student.encoder.last_layers)
    loss = ctc_loss(log_probs, tokens, lens, torch.tensor([1.0, 0.8]), blank_index=0)
    loss = loss + ctc_posterior_kl(log_probs, teacher(feats, lens), lens)
    loss.backward()
    assert torch.isfinite(loss)
    for i, layer in enumerate(student.encoder.layers):
        has_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
        assert has_grad == (i in ran)
    assert 0 < len(ran) < 4  # seeded gates: some layers skipped in this step


def test_make_dynamic_rejects_unsupported_models():
    with pytest.raises(PretrainedModelError, match="no ConformerEncoder or TransformerEncoder"):
        make_dynamic(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(PretrainedModelError, match="lack"):
        ctc_model_from_interface({"CNN": torch.nn.Identity()})


def test_make_dynamic_is_idempotent():
    hp = sb_model()
    model = make_dynamic(hp["Transformer"])
    encoder = model.encoder
    assert make_dynamic(model).encoder is encoder
    assert dynamic_encoders(model) == [encoder]


LOCAL_MODEL_YAML = """
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: 80
normalizer: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence  # a hub model's global statistics come with its files
tokenizer: !new:sentencepiece.SentencePieceProcessor
    model_file: {spm}
Tencoder: !new:speechbrain.lobes.models.transformer.TransformerASR.EncoderWrapper
    transformer: !ref <Transformer>
encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    input_shape: [null, null, 80]
    compute_features: !ref <compute_features>
    normalize: !ref <normalizer>
    cnn: !ref <CNN>
    transformer_encoder: !ref <Tencoder>
ctc_scorer: !new:speechbrain.decoders.scorer.CTCScorer
    eos_index: 2
    blank_index: 0
    ctc_fc: !ref <ctc_lin>
scorer: !new:speechbrain.decoders.scorer.ScorerBuilder
    full_scorers: [!ref <ctc_scorer>]
    weights:
        ctc: 0.4
decoder: !new:speechbrain.decoders.S2STransformerBeamSearcher
    modules: [!ref <Transformer>, !ref <seq_lin>]
    bos_index: 1
    eos_index: 2
    min_decode_ratio: 0.0
    max_decode_ratio: 0.2
    beam_size: 2
    using_eos_threshold: False
    length_normalization: True
    scorer: !ref <scorer>
modules:
    encoder: !ref <encoder>
    decoder: !ref <decoder>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables: {{}}
"""


def local_hub_model(tmp_path):
    """A SpeechBrain EncoderDecoderASR folder laid out like the hub conformer model (model section from
    SpeechBrain's recipe, random weights, a character SentencePiece model)."""
    import sentencepiece as spm

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["one two three", "four five six", "seven eight nine zero", "oh"] * 5))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=20,
                                   model_type="char", bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    source = tmp_path / "model"
    source.mkdir()
    body = SB_CONFORMER_YAML.split("encoder_module: conformer", 1)
    (source / "hyperparams.yaml").write_text(body[0] + "encoder_module: conformer" + body[1]
                                             + LOCAL_MODEL_YAML.format(spm=tmp_path / "spm.model"))
    return source


def test_make_dynamic_speechbrain_interface_offline(tmp_path, fsdd_dir, capsys):
    """On a local hub-layout model: make_dynamic on its Transformer changes nothing at full depth,
    transcribe_file runs the chosen layers only, and the CTC view / CLI read its hparams."""
    from speechbrain.inference.ASR import EncoderDecoderASR

    from dld_brain.pretrained import _main

    source = local_hub_model(tmp_path)
    torch.manual_seed(0)
    asr = EncoderDecoderASR.from_hparams(source=str(source), savedir=str(tmp_path / "saved"))
    wav = sorted((fsdd_dir / "recordings").glob("*.wav"))[0]
    before = asr.transcribe_file(str(wav))
    make_dynamic(asr.hparams.Transformer)
    encoder = asr.hparams.Transformer.encoder
    assert isinstance(encoder, GatedConformerEncoder)
    assert asr.transcribe_file(str(wav)) == before
    calls = count_calls(encoder)
    with encoder.at_depth(1) as chosen:
        asr.transcribe_file(str(wav))
    assert [c > 0 for c in calls] == [i in chosen for i in range(4)]
    parts = ctc_model_from_interface(asr)
    assert parts["model"].encoder is encoder and parts["normalize"] is asr.hparams.normalizer
    assert _main(["--source", str(source), "--savedir", str(tmp_path / "saved2"), "--audio", str(wav),
                  "--depths", "1", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in out] == ["depth 1", "depth 4"]


def test_make_dynamic_pretrained_dld_recipe_config(tmp_path):
    """hparams/librispeech_pretrained_dld.yaml on a local hub-layout model: the student is the pretrained
    CTC model made dynamic, the teacher a frozen copy of it; one DLD step trains the student (layers
    skipped, KL term present) and leaves the teacher and the pretrained statistics untouched."""
    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedBatch

    from dld_brain.brain import DynamicDepthCTCBrain
    from dld_brain.hparams import load_hparams

    source = local_hub_model(tmp_path)
    hp = load_hparams(str(REPO / "hparams" / "librispeech_pretrained_dld.yaml"), {
        "data_folder": str(tmp_path), "experiment_root": str(tmp_path / "exp"), "pretrained_source": str(source),
        "valid_depths": [2, 4]})
    model = hp["model"]
    assert isinstance(model, TransformerCTC) and model.encoder.drop_prob == 0.5
    assert all(p.requires_grad for p in model.parameters())  # SpeechBrain's interface had frozen them
    assert hp["normalize"].update_until_epoch == 0
    sp = hp["pretrained_tokenizer"]
    brain = DynamicDepthCTCBrain(modules=hp["modules"], opt_class=hp["opt_class"], hparams=hp,
                                 run_opts={"device": "cpu"}, checkpointer=None)
    teacher = brain.teacher["model"]
    assert teacher is not model and not any(p.requires_grad for p in teacher.parameters())
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(v, initial[k]) for k, v in teacher.state_dict().items())
    torch.manual_seed(2)
    items = [{"id": f"u{i}", "sig": torch.randn(8000), "wrd": w,
              "tokens": torch.tensor(sp.encode_as_ids(w))} for i, w in enumerate(["one two", "three"])]
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN)
    brain.modules.train()  # as Brain.fit does
    model.encoder.gate_sampler.generator.manual_seed(1)  # draws layers [0, 3]
    loss = brain.fit_batch(PaddedBatch(items))
    assert torch.isfinite(loss) and brain._loss_parts["kd"] > 0
    assert model.encoder.last_layers == [0, 3]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])}
    assert any(k.startswith("encoder.layers.0.") for k in changed)
    assert not any(k.startswith(("encoder.layers.1.", "encoder.layers.2.")) for k in changed)
    assert all(torch.equal(v, initial[k]) for k, v in teacher.state_dict().items())
