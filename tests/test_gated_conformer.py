"""The gated conformer lobe against SpeechBrain's ConformerEncoder, true layer skipping, depth control,
executed-parameter counts, and the ConformerCTC model around it."""

import io

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.nnet.attention import RelPosEncXL

from dld_brain.gates import DepthError, select_layers
from dld_brain.lobes import ConformerCTC, GatedConformerEncoder, executed_parameters

CFG = dict(num_layers=4, d_model=32, d_ffn=64, nhead=2, kernel_size=3, dropout=0.0)
CTC_CFG = dict(n_mels=16, vocab_size=8, d_model=32, num_layers=4, nhead=2, d_ffn=64, kernel_size=3)
ATOL = 1e-5


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = torch.randn(3, 20, 32)
    return x, RelPosEncXL(32)(x)


def encoder(**kw):
    torch.manual_seed(1)
    return GatedConformerEncoder(**{**CFG, **kw})


def count_calls(enc):
    calls = [0] * enc.num_layers
    for i, layer in enumerate(enc.layers):
        layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def manual_chain(enc, x, pos, layers, mask=None):
    out = x
    for i in layers:
        out, _ = enc.layers[i](out, src_key_padding_mask=mask, pos_embs=pos)
    return enc.norm(out)


# ---- equivalence with SpeechBrain ----------------------------------------------------------------


def test_state_dict_keys_identical_to_speechbrain():
    ours, theirs = encoder(drop_prob=0.5), ConformerEncoder(**CFG)
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items())


def test_all_gates_on_in_eval_equals_speechbrain(data):
    x, pos = data
    ours = encoder(drop_prob=0.5).eval()  # eval, no depth set: every layer, random gates ignored
    torch.manual_seed(7)
    theirs = ConformerEncoder(**CFG).eval()
    assert not torch.allclose(ours(x, pos_embs=pos)[0], theirs(x, pos_embs=pos)[0], atol=ATOL)  # other init
    theirs.load_state_dict(ours.state_dict())
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[2, 15:] = True
    for m in (None, mask):
        a = ours(x, src_key_padding_mask=m, pos_embs=pos)[0]
        b = theirs(x, src_key_padding_mask=m, pos_embs=pos)[0]
        assert a.shape == b.shape == x.shape
        assert torch.allclose(a, b, atol=ATOL)
    assert ours.last_layers == [0, 1, 2, 3]


def test_static_training_equals_speechbrain(data):
    x, pos = data
    static = encoder(drop_prob=0.0).train()  # drop_prob 0 in training: every layer, every batch
    theirs = ConformerEncoder(**CFG).train()
    theirs.load_state_dict(static.state_dict())  # and the other direction: their weights into ours
    static.load_state_dict(theirs.state_dict())
    for _ in range(3):
        assert torch.allclose(static(x, pos_embs=pos)[0], theirs(x, pos_embs=pos)[0], atol=ATOL)
        assert static.last_layers == [0, 1, 2, 3]


# ---- true skipping -------------------------------------------------------------------------------


def test_skipped_layers_are_not_computed_and_get_no_gradient(data):
    x, pos = data
    enc = encoder(drop_prob=0.5, gate_seed=5).train()
    calls = count_calls(enc)
    partial = 0
    seen = set()
    for _ in range(10):  # random gates: exactly the reported layers are called, once each
        calls[:] = [0] * 4
        enc.zero_grad(set_to_none=True)
        out, attn = enc(x, pos_embs=pos)
        run = enc.last_layers
        assert calls == [int(i in run) for i in range(4)]
        assert len(attn) == len(run)
        out.sum().backward()
        for i, layer in enumerate(enc.layers):
            grads = [p.grad for p in layer.parameters()]
            if i in run:
                assert all(g is not None for g in grads), f"active layer {i} has no gradient"
                assert any(g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), f"skipped layer {i} has a gradient"
        assert all(p.grad is not None for p in enc.norm.parameters())
        partial += 0 < len(run) < 4
        seen.add(tuple(run))
    assert partial > 0 and len(seen) > 1  # the draws really skipped layers, and not always the same ones


def test_gates_follow_the_sampler_sequence(data):
    x, pos = data
    enc = encoder(drop_prob=0.5, gate_seed=11).train()
    reference = encoder(drop_prob=0.5, gate_seed=11).gate_sampler
    for _ in range(5):
        enc(x, pos_embs=pos)
        assert enc.last_layers == reference.sample()


def test_all_gates_closed_runs_only_the_final_norm(data, monkeypatch):
    x, pos = data
    enc = encoder(drop_prob=0.5).train()
    calls = count_calls(enc)
    monkeypatch.setattr(enc.gate_sampler, "sample", lambda: [])
    out, attn = enc(x, pos_embs=pos)
    assert calls == [0, 0, 0, 0] and attn == [] and enc.last_layers == []
    assert torch.allclose(out, enc.norm(x), atol=ATOL)


def test_eval_ignores_random_gates(data):
    x, pos = data
    enc = encoder(drop_prob=0.9).eval()
    calls = count_calls(enc)
    draws = enc.gate_sampler.draws
    first = enc(x, pos_embs=pos)[0]
    for _ in range(3):
        assert torch.equal(enc(x, pos_embs=pos)[0], first)
        assert enc.last_layers == [0, 1, 2, 3]
    assert calls == [4, 4, 4, 4]
    assert enc.gate_sampler.draws == draws  # no gate was drawn


def test_training_with_zero_drop_prob_runs_all_layers(data):
    x, pos = data
    enc = encoder(drop_prob=0.0).train()
    calls = count_calls(enc)
    for _ in range(4):
        enc(x, pos_embs=pos)
        assert enc.last_layers == [0, 1, 2, 3]
    assert calls == [4, 4, 4, 4]


# ---- explicit layers and depth control -----------------------------------------------------------


def test_explicit_layers_argument(data):
    x, pos = data
    enc = encoder(drop_prob=0.5).train()  # an explicit list also wins over random gates in training
    calls = count_calls(enc)
    draws = enc.gate_sampler.draws
    out, _ = enc(x, pos_embs=pos, layers=[3, 0])
    assert enc.last_layers == [0, 3] and calls == [1, 0, 0, 1]
    assert enc.gate_sampler.draws == draws
    enc.eval()
    out, _ = enc(x, pos_embs=pos, layers=[3, 0])
    assert torch.allclose(out, manual_chain(enc, x, pos, [0, 3]), atol=ATOL)
    with pytest.raises(DepthError, match="0..3"):
        enc(x, pos_embs=pos, layers=[4])


@pytest.mark.parametrize("policy", ["even", "first", "last"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_depth_equals_manual_chain(data, policy, depth):
    x, pos = data
    enc = encoder(depth_policy=policy).eval()
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[1, 12:] = True
    calls = count_calls(enc)
    chosen = enc.set_depth(depth)
    assert chosen == select_layers(4, depth, policy=policy)
    out, _ = enc(x, src_key_padding_mask=mask, pos_embs=pos)
    assert enc.last_layers == chosen and calls == [int(i in chosen) for i in range(4)]
    assert torch.allclose(out, manual_chain(enc, x, pos, chosen, mask), atol=ATOL)


def test_set_depth_and_at_depth_restore(data):
    x, pos = data
    enc = encoder().eval()
    assert enc.set_depth(4) == [0, 1, 2, 3] and enc.inference_layers is None  # full depth = no restriction
    with enc.at_depth(2) as layers:
        assert layers == [1, 3]
        out, _ = enc(x, pos_embs=pos)
        assert enc.last_layers == [1, 3]
    assert torch.allclose(out, manual_chain(enc, x, pos, [1, 3]), atol=ATOL)
    assert enc.inference_layers is None  # the context restored the full depth
    enc(x, pos_embs=pos)
    assert enc.last_layers == [0, 1, 2, 3]

    assert enc.set_depth(layers=[2, 0]) == [0, 2]
    with enc.at_depth(1, policy="first") as layers:
        assert layers == [0]
        enc(x, pos_embs=pos)
        assert enc.last_layers == [0]
    assert enc.inference_layers == [0, 2]  # the previous explicit choice is back
    with pytest.raises(RuntimeError, match="boom"), enc.at_depth(layers=[3]):
        raise RuntimeError("boom")
    assert enc.inference_layers == [0, 2]  # restored after an exception too
    with pytest.raises(DepthError):
        enc.set_depth(5)
    assert enc.inference_layers == [0, 2]  # a rejected depth leaves the choice unchanged
    enc(x, pos_embs=pos)
    assert enc.last_layers == [0, 2]
    enc.set_depth(None)
    enc(x, pos_embs=pos)
    assert enc.last_layers == [0, 1, 2, 3]


def test_constructor_and_input_checks(data):
    x, _ = data
    with pytest.raises(DepthError, match="'middle'"):
        encoder(depth_policy="middle")
    with pytest.raises(ValueError, match="drop_prob"):
        encoder(drop_prob=1.0)
    with pytest.raises(ValueError, match="pos_embs"):
        encoder().eval()(x)
    assert encoder(drop_prob=0.3).drop_prob == 0.3


def test_hidden_states_follow_the_run_layers(data):
    x, pos = data
    enc = encoder(output_hidden_states=True).eval()
    with enc.at_depth(2):
        out, attn, hidden = enc(x, pos_embs=pos)
    assert len(attn) == 2 and len(hidden) == 3 and torch.equal(hidden[0], x)
    assert torch.allclose(out, enc.norm(hidden[-1]), atol=ATOL)


# ---- HyperPyYAML -----------------------------------------------------------------------------------


def test_usable_from_yaml(data):
    x, _ = data
    hparams = load_hyperpyyaml(io.StringIO("""
d_model: 32
pos: !new:speechbrain.nnet.attention.RelPosEncXL
    emb_dim: !ref <d_model>
encoder: !new:dld_brain.lobes.GatedConformerEncoder
    num_layers: 3
    d_model: !ref <d_model>
    d_ffn: 64
    nhead: 2
    kernel_size: 3
    causal: False
    attention_type: RelPosMHAXL
    drop_prob: 0.5
    gate_seed: 3
    depth_policy: first
"""))
    enc = hparams["encoder"]
    assert isinstance(enc, GatedConformerEncoder) and isinstance(hparams["pos"], RelPosEncXL)
    assert enc.drop_prob == 0.5 and enc.gate_sampler.seed == 3 and enc.num_layers == 3
    enc.eval()
    assert enc.set_depth(2) == [0, 1]
    out, _ = enc(x, pos_embs=hparams["pos"](x))
    assert out.shape == x.shape and enc.last_layers == [0, 1]
    theirs = ConformerEncoder(num_layers=3, d_model=32, d_ffn=64, nhead=2, kernel_size=3)
    theirs.load_state_dict(enc.state_dict())  # a SpeechBrain checkpoint of the same shape loads


# ---- executed parameters ---------------------------------------------------------------------------


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_executed_parameters():
    torch.manual_seed(0)
    model = ConformerCTC(**CTC_CFG)
    enc = model.encoder
    per_layer = n_params(enc.layers[0])
    assert all(n_params(layer) == per_layer for layer in enc.layers)
    norm = n_params(enc.norm)
    full = executed_parameters(model)
    assert full == {"encoder": n_params(enc), "total": n_params(model)}
    assert executed_parameters(model, [0, 1, 2, 3]) == full
    rest = n_params(model) - 4 * per_layer
    previous = None
    for depth in range(4, 0, -1):
        for policy in ("even", "first", "last"):
            counts = executed_parameters(model, select_layers(4, depth, policy=policy))
            assert counts == {"encoder": depth * per_layer + norm, "total": rest + depth * per_layer}
        if previous is not None:
            assert counts["total"] < previous["total"] and counts["encoder"] < previous["encoder"]
        previous = counts
    assert executed_parameters(enc, [1, 3]) == {"encoder": 2 * per_layer + norm,
                                                "total": n_params(enc) - 2 * per_layer}


# ---- ConformerCTC --------------------------------------------------------------------------------


@pytest.mark.parametrize("frames, expected", [(40, 10), (41, 11), (37, 10), (44, 11)])
def test_conformer_ctc_outputs_log_probs(frames, expected):
    torch.manual_seed(0)
    model = ConformerCTC(**{**CTC_CFG, "num_layers": 2}).eval()
    out = model(torch.randn(2, frames, 16), torch.tensor([1.0, 0.6]))
    assert out.shape == (2, expected, 8) and out.dtype == torch.float32
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, expected), atol=1e-5)
    assert (out <= 0).all()


def test_conformer_ctc_depth_and_config():
    torch.manual_seed(0)
    model = ConformerCTC(**CTC_CFG, drop_prob=0.5).eval()
    feats, lens = torch.randn(2, 40, 16), torch.ones(2)
    full = model(feats, lens)
    assert model.encoder.last_layers == [0, 1, 2, 3]
    with model.encoder.at_depth(2):
        half = model(feats, lens)
        assert model.encoder.last_layers == [1, 3]
    assert torch.allclose(model(feats, lens, layers=[1, 3]), half, atol=ATOL)
    assert not torch.allclose(full, half, atol=1e-3)
    rebuilt = ConformerCTC(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt.eval()(feats, lens), full, atol=ATOL)
    with pytest.raises(ValueError, match="vocab_size"):
        ConformerCTC(16, 1)


def test_padding_does_not_change_valid_frames_without_temporal_conv():
    """A shorter utterance (length a multiple of 4) padded into a batch gives the same valid-frame outputs as
    alone when the conformer conv kernel is 1: the front-end and the attention masking are padding-safe.

    With kernel_size > 1 this does NOT hold: SpeechBrain's ConvolutionModule masks only its output, so its
    depthwise conv reads padded frames into the last valid ones, and attention spreads that further.
    """
    torch.manual_seed(0)
    model = ConformerCTC(**{**CTC_CFG, "kernel_size": 1}).eval()
    long, short = torch.randn(1, 40, 16), torch.randn(1, 24, 16)
    alone = model(short, torch.ones(1))
    assert alone.shape == (1, 6, 8)
    for fill in (0.0, 3.0):  # whatever the padding values are
        padded = torch.full((1, 40, 16), fill)
        padded[:, :24] = short
        batch = model(torch.cat([long, padded]), torch.tensor([1.0, 0.6]))
        assert torch.allclose(batch[1, :6], alone[0], atol=ATOL)
        assert torch.allclose(batch[0], model(long, torch.ones(1))[0], atol=ATOL)
