"""Input-conditioned layer selection: exact budgets at inference, gradients to the selector, grouped
execution of mixed layer sets equal to per-utterance runs, clear budget errors."""

import pytest
import torch

from dld_brain.lobes import ConformerCTC
from dld_brain.lobes.selector import (
    BudgetError,
    LayerSelector,
    SelectiveDepthModel,
    budget_loss,
    masks_to_layer_sets,
    relaxed_gates,
    topk_mask,
)

CTC_CFG = dict(n_mels=16, vocab_size=8, d_model=32, num_layers=4, nhead=2, d_ffn=64, kernel_size=3, dropout=0.0)
ATOL = 1e-5


def tiny_model(relaxation="gumbel_sigmoid", **kw):
    torch.manual_seed(0)
    backbone = ConformerCTC(**{**CTC_CFG, **kw})
    selector = LayerSelector(input_dim=CTC_CFG["d_model"], num_layers=backbone.encoder.num_layers, hidden_dim=16)
    return SelectiveDepthModel(backbone, selector, relaxation=relaxation)


@pytest.fixture
def batch():
    torch.manual_seed(1)
    feats = torch.randn(6, 48, 16)
    lens = torch.tensor([1.0, 0.9, 0.75, 1.0, 0.6, 0.85])
    return feats, lens


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_inference_runs_exactly_k_layers(batch, k):
    model = tiny_model().eval()
    feats, lens = batch
    with torch.no_grad():
        _, _, masks = model(feats, lens, k)
    assert masks.sum(dim=1).tolist() == [k] * feats.shape[0]
    # per-utterance budgets in one batch
    budgets = [1, 2, 3, 4, 2, 1]
    with torch.no_grad():
        _, _, masks = model(feats, lens, budgets)
    assert masks.sum(dim=1).long().tolist() == budgets


def test_inference_executes_only_selected_layers(batch):
    model = tiny_model().eval()
    feats, lens = batch
    calls = [0] * 4
    for i, layer in enumerate(model.backbone.encoder.layers):
        layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    with torch.no_grad():
        x, pad = model.backbone.embed(feats, lens)
        masks = torch.zeros(6, 4)
        masks[:3, [0, 1]] = 1  # group A: layers 0, 1
        masks[3:, [1, 3]] = 1  # group B: layers 1, 3
        model.run_masks(x, pad, masks, execution="grouped")
    assert calls == [1, 2, 0, 1]  # one call per group using the layer; layer 2 never computed


def test_topk_mask_ties_and_per_row_budget():
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    masks = topk_mask(scores, torch.tensor([2, 3]))
    assert masks.sum(dim=1).tolist() == [2, 3]
    assert masks[1].tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("relaxation", ["gumbel_sigmoid", "gumbel_topk"])
def test_gradients_reach_the_selector_with_frozen_backbone(batch, relaxation):
    model = tiny_model(relaxation).train()
    model.backbone.requires_grad_(False)
    feats, lens = batch
    torch.manual_seed(3)
    log_probs, logits, gates = model(feats, lens, 2)
    assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}  # hard in the forward pass
    if relaxation == "gumbel_topk":
        assert gates.detach().sum(dim=1).tolist() == [2.0] * 6
    targets = torch.randint(1, 8, (6, 5))
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets,
                                        torch.full((6,), log_probs.shape[1]), torch.full((6,), 5))
    (loss + budget_loss(logits, 2)).backward()
    grads = [p.grad for p in model.selector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    # the task loss alone (no budget term) also reaches the selector, through the straight-through gates
    model.zero_grad()
    log_probs, logits, gates = model(feats, lens, 2)
    log_probs.sum().backward()
    assert float(model.selector.mlp[-1].weight.grad.abs().sum()) > 0


def test_budget_loss_pulls_expected_layers_to_k():
    logits = torch.zeros(3, 4, requires_grad=True)  # expected kept layers 2 per utterance
    assert float(budget_loss(logits, 2).detach()) == pytest.approx(0.0)
    budget_loss(logits, 1).backward()
    assert (logits.grad > 0).all()  # descending the loss lowers the keep logits
    torch.manual_seed(0)
    counts = torch.stack([relaxed_gates(torch.full((1000, 4), 0.0), 2).detach().sum(1) for _ in range(2)])
    assert float(counts.mean()) == pytest.approx(2.0, abs=0.1)  # Bernoulli(sigmoid(0)) keeps half of 4


@pytest.mark.parametrize("execution", ["grouped", "masked", "auto"])
def test_mixed_layer_sets_equal_each_utterance_alone(batch, execution):
    model = tiny_model().eval()
    feats, lens = batch
    budgets = [1, 3, 2, 4, 2, 3]
    with torch.no_grad():
        x, pad = model.backbone.embed(feats, lens)
        masks = model.select(x, pad, budgets)
        sets = masks_to_layer_sets(masks)
        model.execution = execution
        log_probs, _, _ = model(feats, lens, budgets)
        for b in range(feats.shape[0]):
            alone = model.backbone(feats[b:b + 1], lens[b:b + 1], layers=list(sets[b]))
            valid = int(torch.round(lens[b] * log_probs.shape[1]))
            assert torch.allclose(log_probs[b, :valid], alone[0, :valid], atol=ATOL), (b, sets[b])
    assert len(set(sets)) > 1  # really a mixed batch


def test_grouped_and_masked_agree_on_random_sets(batch):
    model = tiny_model().eval()
    feats, lens = batch
    torch.manual_seed(5)
    masks = topk_mask(torch.randn(6, 4), [1, 2, 3, 4, 2, 1])
    with torch.no_grad():
        x, pad = model.backbone.embed(feats, lens)
        a = model.run_masks(x, pad, masks, "grouped")
        b = model.run_masks(x, pad, masks, "masked")
        c = model.run_masks(x, pad, masks, "auto")
    assert torch.allclose(a, b, atol=ATOL) and torch.allclose(a, c, atol=ATOL)


@pytest.mark.parametrize("k", [0, 5, -1, [1, 2, 3, 4, 5, 9], 2.5])
def test_impossible_budget_is_a_clear_error(batch, k):
    model = tiny_model().eval()
    feats, lens = batch
    with pytest.raises(BudgetError, match=r"1\.\.4"):
        model(feats, lens, k)


def test_impossible_budget_in_training_and_in_topk():
    with pytest.raises(BudgetError, match=r"k=0 is impossible.*1\.\.4"):
        relaxed_gates(torch.zeros(2, 4), 0)
    with pytest.raises(BudgetError, match=r"k=7 is impossible.*1\.\.6"):
        topk_mask(torch.zeros(2, 6), 7)


# ---- the selector brain on real audio (tiny untrained backbone, one short epoch) ------------------------


def test_selector_brain_trains_only_the_selector_on_real_audio(tmp_path, fsdd_dir):
    import sys

    from conftest import REPO, tiny
    from speechbrain.utils.checkpoints import Checkpointer

    from dld_brain.dataio import make_asr_datasets
    from dld_brain.recipe import build_tokenizer, setup_experiment, train_loader_options
    from dld_brain.selector_brain import SelectorCTCBrain

    sys.path.insert(0, str(REPO / "recipes" / "FSDD"))
    from train import prepare

    args = [str(REPO / "hparams" / "fsdd" / "selector.yaml"), f"--experiment_root={tmp_path}",
            f"--data_folder={fsdd_dir}", f"--backbone_checkpoint={tmp_path / 'backbone'}",
            *tiny(takes_per_digit=1, num_layers=3), "--valid_budgets=[1,3]", "--check_audio=off"]
    hparams, run_opts, _ = setup_experiment(args)
    prepare(hparams)
    hparams["tokenizer"] = build_tokenizer(hparams)
    datasets = make_asr_datasets(hparams, hparams["tokenizer"])
    # an (untrained) backbone checkpoint, saved the way a recipe run saves it
    backbone_state = {k: v.clone() for k, v in hparams["model"].state_dict().items()}
    Checkpointer(tmp_path / "backbone" / "save", {"model": hparams["model"], "normalize": hparams["normalize"]}
                 ).save_checkpoint(meta={"WER": 50.0})
    selector_state = {k: v.clone() for k, v in hparams["selector"].state_dict().items()}
    brain = SelectorCTCBrain(modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
                             run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.fit(brain.hparams.epoch_counter, datasets["train"], datasets["valid"],
              train_loader_kwargs=train_loader_options(hparams, datasets["train"]))
    assert any(not torch.equal(v, hparams["selector"].state_dict()[k]) for k, v in selector_state.items())
    assert all(torch.equal(v, hparams["model"].state_dict()[k]) for k, v in backbone_state.items())  # frozen
    log = (tmp_path / "selector" / "train_log.txt").read_text()
    assert "budget_loss" in log and "WER_n1" in log and "WER_n3" in log
    assert brain.evaluate_at(datasets["test"], 2) >= 0.0
    with pytest.raises(BudgetError, match=r"k=4 is impossible.*1\.\.3"):
        brain.evaluate_at(datasets["test"], 4)


# ---- the same selector on the gated WavLM lobe ------------------------------------------------------------

TINY_WAVLM = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                  num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=32,
                  hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  final_dropout=0.0, mask_time_prob=0.0)


def test_selector_on_tiny_wavlm():
    pytest.importorskip("transformers")
    from dld_brain.lobes.wavlm import WavLMCTC

    torch.manual_seed(0)
    backbone = WavLMCTC(vocab_size=8, config=TINY_WAVLM, head_dropout=0.0).eval()
    model = SelectiveDepthModel(backbone, LayerSelector(32, 3, hidden_dim=16)).eval()
    wavs = torch.randn(4, 3200)
    lens = torch.tensor([1.0, 0.8, 0.6, 0.9])
    with torch.no_grad():
        x, pad = model.backbone.embed(wavs, lens)
        for layers in ([0, 1, 2], [1], [0, 2]):  # the runner matches the lobe's own forward
            ours = model.backbone.output(model.backbone.run_layers(x, pad, layers=layers))
            assert torch.allclose(ours, backbone(wavs, lens, layers=layers), atol=ATOL)
        budgets = [1, 2, 3, 2]
        log_probs, _, masks = model(wavs, lens, budgets)
        assert masks.sum(dim=1).long().tolist() == budgets
        sets = masks_to_layer_sets(masks)
        for b in range(4):
            alone = backbone(wavs[b:b + 1], lens[b:b + 1], layers=list(sets[b]))
            valid = int((~pad[b]).sum())
            assert torch.allclose(log_probs[b, :valid], alone[0, :valid], atol=ATOL)
    model.train()
    model.backbone.requires_grad_(False)
    log_probs, logits, _ = model(wavs, lens, 2)
    (log_probs.sum() + budget_loss(logits, 2)).backward()
    assert float(model.selector.mlp[-1].weight.grad.abs().sum()) > 0
    with pytest.raises(BudgetError, match=r"1\.\.3"):
        model(wavs, lens, 4)
