"""The gated conformer lobe against SpeechBrain's ConformerEncoder, true layer skipping, depth control."""

import io

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from speechbrain.nnet.attention import RelPosEncXL

from dld_brain.lobes import ConformerCTC, GatedConformerEncoder, executed_parameters

CFG = dict(num_layers=4, d_model=32, d_ffn=64, nhead=2, kernel_size=3, dropout=0.0)


@pytest.fixture
def data():
    torch.manual_seed(0)
    x = torch.randn(3, 20, 32)
    return x, RelPosEncXL(32)(x)


def encoder(**kw):
    torch.manual_seed(1)
    return GatedConformerEncoder(**{**CFG, **kw})


def test_all_gates_on_equals_speechbrain(data):
    x, pos = data
    ours = encoder(drop_prob=0.5).eval()
    theirs = ConformerEncoder(**CFG).eval()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[2, 15:] = True
    assert torch.allclose(ours(x, src_key_padding_mask=mask, pos_embs=pos)[0],
                          theirs(x, src_key_padding_mask=mask, pos_embs=pos)[0], atol=1e-6)
    static = encoder(drop_prob=0.0).train()  # drop_prob 0 in training also runs every layer
    static.load_state_dict(ours.state_dict())
    assert torch.allclose(static(x, pos_embs=pos)[0], theirs(x, pos_embs=pos)[0], atol=1e-6)


def count_calls(enc):
    calls = [0] * enc.num_layers
    for i, layer in enumerate(enc.layers):
        layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_skipped_layers_are_not_computed_and_get_no_gradient(data):
    x, pos = data
    enc = encoder(drop_prob=0.5, gate_seed=5).train()
    calls = count_calls(enc)
    partial = 0
    for _ in range(8):  # random gates: exactly the reported layers are called, once each
        calls[:] = [0] * 4
        enc.zero_grad(set_to_none=True)
        out, _ = enc(x, pos_embs=pos)
        run = enc.last_layers
        assert calls == [int(i in run) for i in range(4)]
        out.sum().backward()
        for i, layer in enumerate(enc.layers):
            grads = [p.grad for p in layer.parameters()]
            if i in run:
                assert all(g is not None for g in grads)
            else:
                assert all(g is None for g in grads), f"skipped layer {i} has a gradient"
        partial += 0 < len(run) < 4
    assert partial > 0  # some draws really skipped layers


def test_depth_equals_manual_chain(data):
    x, pos = data
    enc = encoder().eval()
    with enc.at_depth(2) as layers:
        assert layers == [1, 3]
        out, _ = enc(x, pos_embs=pos)
    manual = x
    for i in layers:
        manual, _ = enc.layers[i](manual, pos_embs=pos)
    assert torch.allclose(out, enc.norm(manual), atol=1e-6)
    assert enc.inference_layers is None  # the context restored the full depth
    enc.set_depth(layers=[0, 2])
    with enc.at_depth(1):
        pass
    assert enc.inference_layers == [0, 2]
    enc.set_depth(None)
    enc(x, pos_embs=pos)
    assert enc.last_layers == [0, 1, 2, 3]


def test_eval_ignores_random_gates(data):
    x, pos = data
    enc = encoder(drop_prob=0.9).eval()
    for _ in range(5):
        enc(x, pos_embs=pos)
        assert enc.last_layers == [0, 1, 2, 3]


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
    drop_prob: 0.5
    depth_policy: first
"""))
    enc = hparams["encoder"].eval()
    assert enc.set_depth(2) == [0, 1]
    out, _ = enc(x, pos_embs=hparams["pos"](x))
    assert out.shape == x.shape


def test_executed_parameters():
    model = ConformerCTC(16, 8, d_model=32, num_layers=4, nhead=2, d_ffn=64, kernel_size=3)
    enc_all = sum(p.numel() for p in model.encoder.parameters())
    full = executed_parameters(model)
    assert full["encoder"] == enc_all and full["total"] == sum(p.numel() for p in model.parameters())
    per_layer = sum(p.numel() for p in model.encoder.layers[0].parameters())
    totals = [executed_parameters(model, list(range(n)))["total"] for n in range(1, 5)]
    assert all(b - a == per_layer for a, b in zip(totals, totals[1:]))


def test_conformer_ctc_outputs_log_probs():
    model = ConformerCTC(16, 8, d_model=32, num_layers=2, nhead=2, d_ffn=64, kernel_size=3).eval()
    out = model(torch.randn(2, 40, 16), torch.tensor([1.0, 0.6]))
    assert out.shape == (2, 10, 8)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 10), atol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        ConformerCTC(16, 1)
