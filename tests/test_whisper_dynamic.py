"""Gated Whisper encoder and the dynamic-depth Whisper recipe (issue 16), on tiny random Whisper configs:
full depth equals the stock encoder, skipped layers are never called and get no gradient, the model's
forward trains through the gates, generate() works at every depth (and matches a stock model holding only
those layers), per-utterance gates in a batch, cropped inputs, and the recipe end to end (shrunk)."""

import copy
import json
import sys

import pytest
import torch
from conftest import REPO

transformers = pytest.importorskip("transformers")

from dld_brain.gates import DepthError  # noqa: E402
from dld_brain.lobes.whisper_encoder import (  # noqa: E402
    GatedWhisperEncoder,
    WhisperInputError,
    crop_frames,
    make_gated_whisper,
)
from dld_brain.whisper import greedy_decode, make_student  # noqa: E402

FRAMES = 40  # max_source_positions 20 x conv stride 2


def tiny_whisper(seed=0, encoder_layers=3, num_mel_bins=8, max_source_positions=20):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=120, num_mel_bins=num_mel_bins, d_model=32, encoder_layers=encoder_layers, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_source_positions=max_source_positions, max_target_positions=16, pad_token_id=100, bos_token_id=100, eos_token_id=100,
        decoder_start_token_id=101, dropout=0.0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases and norms, so a misplaced tensor cannot go unnoticed
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                param.normal_(0, 0.3)
    model.generation_config.forced_decoder_ids = None
    model.generation_config.suppress_tokens = []
    model.generation_config.begin_suppress_tokens = []
    return model


def gated(seed=0, **kwargs):
    model = tiny_whisper(seed)
    stock = copy.deepcopy(model)
    return model, make_gated_whisper(model, **kwargs), stock


def test_whisper_dynamic_full_depth_equals_stock_encoder():
    model, encoder, stock = gated()
    x = torch.randn(2, 8, FRAMES)
    with torch.no_grad():
        assert torch.equal(encoder(x).last_hidden_state, stock.model.encoder(x).last_hidden_state)
        tokens = torch.tensor([[101, 5, 6, 7], [101, 8, 9, 100]])
        assert torch.allclose(model(input_features=x, decoder_input_ids=tokens).logits,
                              stock(input_features=x, decoder_input_ids=tokens).logits, atol=1e-6)
    assert set(model.state_dict()) == set(stock.state_dict())
    stock.load_state_dict(model.state_dict())  # checkpoints stay interchangeable


def test_whisper_dynamic_depth_matches_stock_model_with_those_layers():
    model, encoder, stock = gated()
    x = torch.randn(2, 8, FRAMES)
    for depth in (1, 2, 3):
        for policy in ("even", "first", "last"):
            with encoder.at_depth(depth, policy=policy) as layers, torch.no_grad():
                ours = encoder(x).last_hidden_state
            reference = make_student(stock, encoder_layers=layers).model.encoder(x).last_hidden_state
            assert torch.allclose(ours, reference, atol=1e-6), (depth, policy)


def test_whisper_dynamic_skipped_layers_never_called_and_get_no_gradient():
    model, encoder, _ = gated(drop_prob=0.5, gate_seed=3)
    model.train()
    calls = []
    for i, layer in enumerate(encoder.layers):
        layer.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
    x = torch.randn(2, 8, FRAMES)
    labels = torch.tensor([[5, 6, 7, 100], [8, 9, 100, 100]])
    for _ in range(6):  # a few batches, so some layer is dropped in some batch
        model.zero_grad(set_to_none=True)
        calls.clear()
        loss = model(input_features=x, labels=labels).loss  # the model's own teacher-forced CE
        loss.backward()
        assert calls == encoder.last_layers
        for i, layer in enumerate(encoder.layers):
            grads = [p.grad for p in layer.parameters()]
            if i in encoder.last_layers:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads)
    assert encoder.gate_sampler.draws == 6
    model.eval()  # inference: all layers again
    with torch.no_grad():
        encoder(x)
    assert encoder.last_layers == [0, 1, 2]


def test_whisper_dynamic_generate_at_every_depth():
    model, encoder, stock = gated()
    x = torch.randn(2, 8, FRAMES)
    for depth in (1, 2, 3):
        with encoder.at_depth(depth) as layers:
            out = model.generate(x, max_new_tokens=5, do_sample=False)
        assert encoder.last_layers == layers
        reference = make_student(stock, encoder_layers=layers).generate(x, max_new_tokens=5, do_sample=False)
        assert torch.equal(out, reference), depth


def test_whisper_dynamic_per_utterance_gates_in_a_batch():
    model, encoder, _ = gated()
    x = torch.randn(3, 8, FRAMES)
    gates = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    calls = []
    for i, layer in enumerate(encoder.layers):
        layer.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
    with torch.no_grad():
        batched = encoder(x, gates=gates).last_hidden_state
        assert calls == [0, 2]  # layer 1 is skipped by every utterance: never called
        for b in range(3):
            alone = encoder(x[b:b + 1], layers=[int(i) for i in torch.nonzero(gates[b]).flatten()]).last_hidden_state
            assert torch.allclose(batched[b:b + 1], alone, atol=1e-6)
    with pytest.raises(DepthError, match="either layers"):
        encoder(x, layers=[0], gates=gates)
    with pytest.raises(DepthError, match="gates must have shape"):
        encoder(x, gates=gates[:, :2])


def test_whisper_dynamic_cropped_inputs():
    model, encoder, _ = gated()
    x = torch.randn(2, 8, FRAMES)
    with pytest.raises(WhisperInputError, match="slice_positions"):
        encoder(x[..., :20])
    encoder.slice_positions = True
    with torch.no_grad():
        short = encoder(x[..., :20]).last_hidden_state
        assert short.shape == (2, 10, 32)
        ids = greedy_decode(model, short, {"prompt": [101], "eot": 100, "suppress_ids": [],
                                           "suppress_ids_begin": []}, max_new_tokens=4)
    assert len(ids) == 2
    from transformers.modeling_outputs import BaseModelOutput

    out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=short), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2  # generate() decodes a cropped encoder output handed to it
    with pytest.raises(WhisperInputError, match="even number"):
        encoder(x[..., :21])
    assert crop_frames(torch.zeros(1, 8, 3000), 8.0).shape[-1] == 800
    assert crop_frames(torch.zeros(1, 8, 3000), None).shape[-1] == 3000
    with pytest.raises(WhisperInputError, match="encoder_seconds"):
        crop_frames(torch.zeros(1, 8, 3000), 40)
    with pytest.raises(WhisperInputError, match="already gated"):
        make_gated_whisper(model)
    assert isinstance(model.get_encoder(), GatedWhisperEncoder)


def test_whisper_dynamic_dld_brain_trains_and_kd_uses_teacher(tmp_path):
    """DynamicWhisperBrain: CE (+ KL to the cached teacher logits) decreases on a few steps."""
    import speechbrain as sb
    from tokenizers import Tokenizer, models, pre_tokenizers

    from dld_brain.whisper_dynamic import DynamicWhisperBrain, evaluate_depths, gated_copy, make_dataset

    base = tiny_whisper()
    vocab = {str(d): d + 10 for d in range(10)}
    vocab["[UNK]"] = 0
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    decoding = {"prompt": [101], "eot": 100, "suppress_ids": [], "suppress_ids_begin": []}
    feats = torch.randn(6, 8, 20)
    ids = [f"u{i}" for i in range(6)]
    texts = ["ONE TWO", "THREE", "FOUR FIVE SIX", "SEVEN", "EIGHT NINE", "ZERO ONE"]
    data = make_dataset(feats, ids, texts, tok, decoding)
    teacher = gated_copy(base, slice_positions=True)
    student = gated_copy(base, drop_prob=0.5, gate_seed=1, slice_positions=True)
    hp = {"teacher": teacher, "kd_weight": 1.0, "kd_temperature": 1.0, "prompt_length": 1, "askd": None,
          "epoch_counter": sb.utils.epoch_loop.EpochCounter(2),
          "train_logger": sb.utils.train_logger.FileTrainLogger(str(tmp_path / "log.txt"))}
    brain = DynamicWhisperBrain(modules={"student": student}, opt_class=lambda p: torch.optim.AdamW(p, lr=1e-2),
                                hparams=hp, run_opts={"device": "cpu", "noprogressbar": True})
    brain.fit(hp["epoch_counter"], data, data, train_loader_kwargs={"batch_size": 3},
              valid_loader_kwargs={"batch_size": 3})
    assert set(brain._teacher_logits) == set(ids)  # computed once per utterance
    assert brain._teacher_logits["u2"].shape == (4, 120)  # prompt + 3 digits -> 4 predicted positions
    log = (tmp_path / "log.txt").read_text().splitlines()
    assert len(log) == 2
    res = evaluate_depths(student, feats, ids, texts, tok, decoding, [1, 3], lambda s: s, max_new_tokens=3)
    assert set(res) == {1, 3} and res[1]["layers"] == [2]


def run_shrunk_recipe(tmp_path, monkeypatch, out, extra, hparams="dynamic.yaml"):
    """recipes/Whisper/dynamic.py on a tiny random Whisper folder and 3+3+3 fake FSDD utterances."""
    import numpy as np
    import pandas as pd
    import soundfile as sf
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / "whisper"
    tiny_whisper(encoder_layers=2, num_mel_bins=80, max_source_positions=1500).save_pretrained(folder)
    vocab = {str(d): d + 10 for d in range(10)}
    vocab["[UNK]"] = 0
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "decoding.json").write_text(json.dumps({"prompt": [101], "eot": 100, "suppress_ids": [],
                                                      "suppress_ids_begin": []}))
    rng = np.random.default_rng(0)
    csvs = {}
    for split in ("train", "valid", "test"):
        rows = []
        for i in range(3):
            wav = tmp_path / f"{split}{i}.wav"
            sf.write(wav, (0.1 * rng.standard_normal(8000)).astype("float32"), 16000)
            rows.append({"ID": f"{split}{i}", "duration": 0.5, "wav": str(wav), "spk_id": "x", "wrd": "ONE TWO"})
        csvs[split] = tmp_path / f"{split}.csv"
        pd.DataFrame(rows).to_csv(csvs[split], index=False)
    sys.path.insert(0, str(REPO / "recipes" / "Whisper"))
    import dynamic

    monkeypatch.setattr(dynamic, "prepare_splits", lambda hp: {s: pd.read_csv(c) for s, c in csvs.items()})
    args = {}
    for arg in [f"--teacher_source={folder}", f"--output_folder={out}", f"--cache_folder={tmp_path / 'cache'}",
                "--number_of_epochs=1", "--batch_size=3", "--max_new_tokens=3", "--bench_utterances=2",
                "--bench_repeats=1", "--encoder_seconds=1.0", *extra]:
        args[arg.split("=", 1)[0]] = arg  # extra overrides replace the defaults above
    return dynamic.main([str(REPO / "hparams" / "whisper" / hparams), *args.values()])


def test_whisper_dynamic_recipe_shrunk(tmp_path, monkeypatch):
    """recipes/Whisper/dynamic.py end to end on a tiny random Whisper folder and 6 fake FSDD utterances."""
    sys.path.insert(0, str(REPO / "recipes" / "Whisper"))
    import dynamic

    out = tmp_path / "out"
    results = run_shrunk_recipe(tmp_path, monkeypatch, out, ["--slicing_check=[30, 1.0]", "--bench_seconds=[1.0]",
                                                              "--seeds=[1, 2]"])
    assert set(results["wer"]) == {"static", "rdld", "dld"}
    assert len(results["wer"]["static"]["1"]) == 1 and len(results["wer"]["dld"]["2"]) == 2
    assert set(results["slicing"]) == {"30.0", "1.0"}
    text = (out / "results.md").read_text()
    assert "dld WER (%)" in text and "±" in text and "speed-up vs full depth" in text
    assert "DLD - RDLD per depth, paired by seed" in text and (out / "wer_per_depth.png").stat().st_size > 1000
    with pytest.raises(Exception, match="methods"):
        dynamic.main([str(REPO / "hparams" / "whisper" / "dynamic.yaml"), "--methods=[bogus]"])


def test_whisper_dynamic_compressed_decoder(tmp_path, monkeypatch):
    """student_decoder_layers: the trained students keep only those decoder layers (DLD's KL still from the
    full teacher), and the latency benchmark times the compressed model next to the full one, at the
    test targets' mean length."""
    sys.path.insert(0, str(REPO / "recipes" / "Whisper"))
    import dynamic

    trained = []
    train = dynamic.train_method
    monkeypatch.setattr(dynamic, "train_method", lambda *a, **k: trained.append(train(*a, **k)) or trained[-1])
    out = tmp_path / "out"
    results = run_shrunk_recipe(tmp_path, monkeypatch, out, ["--student_decoder_layers=[1]", "--methods=[rdld, dld]",
                                                              "--seeds=[1]", "--bench_seconds=[30, 1.0]"])
    assert [m.config.decoder_layers for m in trained] == [1, 1]
    assert trained[0].config.encoder_layers == 2  # the encoder stays whole (and gated)
    assert results["decoder_layers"] == [1] and results["bench_tokens"] == 3  # " 1 2" -> 2 tokens + end of text
    assert set(results["latency_compressed"]) == {"30.0", "1.0"}
    text = (out / "results.md").read_text()
    assert "decoder layers [1]" in text and "exactly 3 decoder steps" in text
    assert "speed-up vs stock (30 s, full depth, full decoder)" in text


def test_whisper_dynamic_latency_fixed_tokens(monkeypatch):
    """With fixed_tokens every depth decodes exactly that many steps (no stop at end of text)."""
    import dld_brain.whisper_dynamic as wd

    model, _, _ = gated()
    calls = []
    monkeypatch.setattr(wd, "log_mel", lambda w, n: torch.zeros(len(w), 8, 3000))
    monkeypatch.setattr(wd, "crop_frames", lambda f, s: f[..., :FRAMES])
    monkeypatch.setattr(wd, "greedy_decode", lambda m, enc, dec, steps, stop_at_eot=True: calls.append((steps, stop_at_eot)))
    times = wd.latency_per_depth(model, [torch.zeros(100)], {}, [1, 3], 1.0, max_new_tokens=9, repeats=2, fixed_tokens=4)
    assert set(times) == {1, 3} and set(calls) == {(4, False)} and len(calls) == 5
    calls.clear()
    wd.latency_per_depth(model, [torch.zeros(100)], {}, [1], 1.0, max_new_tokens=9, repeats=1)
    assert set(calls) == {(9, True)}


def test_whisper_dynamic_librispeech_yaml_resolves(tmp_path):
    """The hub + LibriSpeech YAML loads on top of the FSDD one and passes the recipe's checks."""
    sys.path.insert(0, str(REPO / "recipes" / "Whisper"))
    import dynamic

    from dld_brain.hparams import load_hparams

    hp = load_hparams(REPO / "hparams" / "whisper" / "dynamic_librispeech.yaml", f"data_folder: {tmp_path}")
    dynamic.check_hparams(hp)
    assert hp["dataset"] == "librispeech" and hp["teacher_source"].startswith("openai/whisper-")
    assert hp["librispeech_splits"]["test"] in hp["librispeech_prep"]["te_splits"]
    with pytest.raises(Exception, match="LibriSpeech folder not found"):
        dynamic.prepare_splits(dict(hp, data_folder=str(tmp_path / "absent")))


def test_whisper_dynamic_paired_seed_differences():
    from dld_brain.whisper_dynamic import paired_seed_differences

    wer = {"rdld": {"1": [50.0, 60.0, 70.0], "2": [10.0, 30.0, 20.0]},
           "dld": {"1": [48.0, 57.0, 69.0], "2": [10.0, 30.0, 20.0]}}
    rows = {r["depth"]: r for r in paired_seed_differences(wer)}
    assert rows[1]["seeds"] == 3 and rows[1]["diff"] == pytest.approx(-2.0)
    assert rows[1]["p"] < 0.2 and rows[1]["half"] < 3.0  # paired: the seed-to-seed spread (10 points) cancels
    assert rows[2]["diff"] == 0 and rows[2]["p"] == 1.0
    assert paired_seed_differences({"dld": wer["dld"]}) == []
    # the same nonzero difference in every seed (e.g. 5 words each time) is the strongest evidence, not none
    words = 100 / 311
    same = paired_seed_differences({"rdld": {"4": [20 * words, 27 * words, 30 * words]},
                                    "dld": {"4": [25 * words, 32 * words, 35 * words]}})
    assert same[0]["diff"] == pytest.approx(5 * words) and same[0]["p"] == 0.0


def test_whisper_dynamic_replot_with_another_runs_latency(tmp_path, monkeypatch):
    """replot: WER from one results.json, speed-ups over the stock model from another run's latency."""
    import dld_brain.whisper_dynamic as wd

    wer = {"rdld": {"1": [50.0, 60.0], "2": [10.0, 12.0]}}
    (tmp_path / "r.json").write_text(json.dumps({"wer": wer, "latency": {}}))
    (tmp_path / "l.json").write_text(json.dumps({"latency": {"30.0": {"1": 1.0, "2": 2.0}, "8.0": {"1": 0.25, "2": 0.5}}}))
    seen = {}
    monkeypatch.setattr(wd, "plot_wer_per_depth", lambda w, path, speedups, title, label: seen.update(
        wer=w, speedups=speedups, label=label))
    wd.replot(tmp_path / "r.json", tmp_path / "p.png", tmp_path / "l.json", seconds=8.0)
    assert seen["wer"] == wer and seen["speedups"] == {"1": 8.0, "2": 4.0} and "stock" in seen["label"]
    wd.replot(tmp_path / "r.json", tmp_path / "p.png")  # no latency in the file: no speed-up labels
    assert seen["speedups"] is None


def test_whisper_dynamic_askd_teacher_schedule(tmp_path, monkeypatch):
    """hparams/whisper/dynamic_askd.yaml: DLD's KL weight follows the cosine teacher schedule (1 at the first
    step, towards 0 at the end), each seed's DLD run starts the schedule afresh, RDLD has none; self-KD is refused."""
    sys.path.insert(0, str(REPO / "recipes" / "Whisper"))
    import dynamic

    from dld_brain.askd import ASKD, WeightSchedule

    out = tmp_path / "out"
    results = run_shrunk_recipe(tmp_path, monkeypatch, out, ["--number_of_epochs=2", "--n_train=3", "--seeds=[1, 2]",
                                                              "--bench_seconds=[1.0]", "--slicing_check=null"],
                                hparams="dynamic_askd.yaml")
    assert set(results["wer"]) == {"rdld", "dld"}
    for seed in (1, 2):  # 3 utterances, batch 3: one step per epoch; cosine over 2 steps: 1.0 at step 0, 0.5 at 1
        log = (out / f"train_log_dld_seed{seed}.txt").read_text().splitlines()
        assert len(log) == 2 and "w_teacher: 1.00e+00" in log[0] and "w_teacher: 5.00e-01" in log[1]
    assert "w_teacher" not in (out / "train_log_rdld_seed1.txt").read_text()
    hp = {"methods": ["dld"], "seeds": [1], "drop_prob": 0.5, "normalizer": "digits", "encoder_seconds": None,
          "slice_positions": True, "bench_tokens": None,
          "askd": ASKD(teacher_schedule=WeightSchedule(), self_schedule=WeightSchedule())}
    with pytest.raises(dynamic.WhisperSetupError, match="askd"):
        dynamic.check_hparams(hp)
    hp["askd"] = ASKD(teacher_schedule=WeightSchedule())
    dynamic.check_hparams(hp)
