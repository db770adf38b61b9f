"""Spoken language understanding (intent classification) with dynamic depth: the classifier, the coffee-order
split, and end-to-end Fluent Speech Commands runs on an FSC-layout corpus built from real spoken orders
(teacher, then DLD, then the accuracy depth sweep), with the clear errors promised for bad inputs."""

import csv
import json
import importlib.util
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import soundfile
import torch
from conftest import REPO, SHARED_DATA

from dld_brain.data.fsc import FSC_DIRNAME, intent_label, prepare_fsc
from dld_brain.data.manifest import DataPrepError, read_manifest
from dld_brain.data.speech_to_intent import prepare_speech_to_intent, stratified_split
from dld_brain.lobes.classifier import ConformerClassifier, masked_attention_pool, masked_mean
from dld_brain.lobes.conformer import executed_parameters
from dld_brain.recipe import main_guard
from dld_brain.safe_files import load_weights
from dld_brain.slu_recipe import run_slu_recipe
from dld_brain.teacher import TeacherError, check_state_compatible, find_checkpoint

S2I_DIR = SHARED_DATA / "speech_to_intent"
FSC_TRAIN = REPO / "recipes" / "FluentSpeechCommands" / "train.py"
HP = REPO / "hparams" / "fsc"
FSC_HEADER = ["", "path", "speakerId", "transcription", "action", "object", "location"]
#: three coffee drinks become three FSC intents "bring_<drink>_none" (real speech, FSC's format)
DRINKS = ("espresso", "latte", "mocha")
PER_SPLIT = {"train": 5, "valid": 2, "test": 2}  # utterances per intent and split
CROP_S = 3.0  # keep the first seconds of each order: enough to exercise the pipeline, fast to train on

#: Command-line overrides that shrink the (paper-sized) FSC recipe to seconds.
TINY_SLU = ["--num_layers=3", "--d_model=32", "--nhead=2", "--d_ffn=64", "--kernel_size=3", "--n_mels=40",
            "--number_of_epochs=1", "--batch_size=8", "--num_classes=3", "--device=cpu", "--valid_depths=all"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def s2i_dir() -> Path:
    """The shared coffee-order copy (real speech); tests needing it skip only when it is absent."""
    if not (S2I_DIR / "labels.csv").is_file():
        pytest.skip(f"real audio not found at {S2I_DIR}")
    return S2I_DIR


def build_fsc(root: Path, s2i_dir: Path) -> Path:
    """Write an FSC-layout corpus under ``root`` (returned: its fluent_speech_commands_dataset folder):
    real orders as 16 kHz WAVs at ``wavs/speakers/<spk>/<id>.wav`` and ``data/<split>_data.csv`` in FSC's
    exact header; one pseudo-speaker per split keeps the split speaker-disjoint as in FSC."""
    labels = list(csv.DictReader(open(s2i_dir / "labels.csv", newline="")))
    dataset = root / "fluent_speech_commands_dataset"
    (dataset / "data").mkdir(parents=True)
    rows = {split: [] for split in PER_SPLIT}
    for drink in DRINKS:
        utts = sorted((r for r in labels if r["coffeeDrink"] == drink), key=lambda r: r["id"])
        start = 0
        for split, count in PER_SPLIT.items():
            spk = f"spk{split}"
            for row in utts[start:start + count]:
                audio, rate = soundfile.read(str(s2i_dir / row["path"]), dtype="int16")
                assert rate == 16000
                rel = f"wavs/speakers/{spk}/{row['id']}.wav"
                (dataset / rel).parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(str(dataset / rel), audio[: int(CROP_S * rate)], rate, subtype="PCM_16")
                rows[split].append([rel, spk, f"bring me a {drink}", "bring", drink, "none"])
            start += count
    for split, items in rows.items():
        write_fsc_csv(dataset / "data" / f"{split}_data.csv", items)
    return dataset


def write_fsc_csv(path: Path, items) -> None:
    """An FSC split file: unnamed index column, then path, speakerId, transcription, action, object, location."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FSC_HEADER)
        for i, item in enumerate(items):
            writer.writerow([i, *item])


def load_recipe():
    """recipes/FluentSpeechCommands/train.py as a module (its __main__ block does not run)."""
    spec = importlib.util.spec_from_file_location("fsc_recipe_train", FSC_TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fsc_args(method, root, data_folder, *extra):
    """Command line of a tiny run; an option in ``extra`` replaces the TINY_SLU one of the same key."""
    keys = {e.split("=")[0] for e in extra}
    tiny = [t for t in TINY_SLU if t.split("=")[0] not in keys]
    return [str(HP / f"{method}.yaml"), f"--experiment_root={root}", f"--data_folder={data_folder}",
            "--fallback_data_folders=[]", *tiny, *extra]


def prepared_test_wavs(root: Path, data_folder: Path) -> list[str]:
    """The test manifest's audio paths, ``$data_root`` resolved to the corpus folder."""
    return [r["wav"] for r in read_manifest(root / "prepared" / "test.csv", replacements={"data_root": data_folder})]


@pytest.fixture(scope="module")
def fsc_corpus(tmp_path_factory, s2i_dir) -> Path:
    return build_fsc(tmp_path_factory.mktemp("fsc_data"), s2i_dir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fsc_corpus):
    """Teacher then DLD trained in-process on the FSC-layout corpus (tiny model, one epoch each)."""
    root = tmp_path_factory.mktemp("fsc_exp")
    prepare = load_recipe().prepare
    teacher = run_slu_recipe(fsc_args("teacher", root, fsc_corpus), prepare)
    dld = run_slu_recipe(fsc_args("dld", root, fsc_corpus, "--number_of_epochs=2"), prepare)
    return root, teacher, dld


def guarded_run(args, capsys):
    """The recipe through main_guard, as train.py's __main__ runs it; returns (exit code, stderr)."""
    prepare = load_recipe().prepare
    with pytest.raises(SystemExit) as exc:
        main_guard(lambda: run_slu_recipe(args, prepare))
    return exc.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------ classifier
def tiny_classifier(**changes):
    kwargs = dict(n_mels=20, num_classes=5, d_model=16, num_layers=4, nhead=2, d_ffn=32, kernel_size=3,
                  dropout=0.0)
    kwargs.update(changes)
    return ConformerClassifier(**kwargs).eval()


def test_masked_mean_ignores_padding():
    x = torch.randn(2, 10, 3)
    lens = torch.tensor([1.0, 0.4])
    garbage = x.clone()
    garbage[1, 4:] = 1e6
    out = masked_mean(garbage, lens)
    assert torch.allclose(out[0], x[0].mean(0))
    assert torch.allclose(out[1], x[1, :4].mean(0))


def test_classifier_shapes_and_pooling_over_valid_frames():
    torch.manual_seed(0)
    model = tiny_classifier()
    feats, lens = torch.randn(3, 80, 20), torch.tensor([1.0, 0.55, 0.3])
    with torch.no_grad():
        log_probs = model(feats, lens)
        assert log_probs.shape == (3, 5) and log_probs.dtype == torch.float32
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3), atol=1e-5)
        enc = model.encode(feats, lens)
        for i in range(3):  # the head sees the mean of the valid encoder frames only
            n = max(1, round(float(lens[i]) * enc.shape[1]))
            expected = torch.log_softmax(model.classifier(enc[i, :n].mean(0)), -1)
            assert torch.allclose(log_probs[i], expected, atol=1e-5)
        # padding beyond the front-end's receptive field (8 input frames) never changes the output:
        # attention, convolution module and pooling all ignore the padded frames
        valid, rel = feats[1:2, :44], torch.tensor([44 / 80])
        outs = [model(torch.cat([valid, torch.zeros(1, 8, 20), 1e3 * torch.randn(1, 28, 20)], 1), rel)
                for _ in range(2)]
        assert torch.allclose(outs[0], outs[1], atol=1e-5)
        assert not torch.allclose(model(feats, lens, layers=[0]), log_probs)


def test_classifier_state_config_and_executed_parameters():
    model = tiny_classifier()
    keys = model.state_dict().keys()
    assert {"classifier.weight", "classifier.bias"} <= set(keys) and not any(k.startswith("ctc_head") for k in keys)
    assert model.config["num_classes"] == 5 and "vocab_size" not in model.config
    assert ConformerClassifier(**model.config).state_dict().keys() == keys  # config rebuilds the model
    per_layer = sum(p.numel() for p in model.encoder.layers[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    for depth in range(1, 5):
        layers = model.encoder.set_depth(depth)
        counted = executed_parameters(model, layers)
        assert counted["total"] == total - (4 - depth) * per_layer
        assert counted["encoder"] == depth * per_layer + sum(p.numel() for p in model.encoder.norm.parameters())
    with pytest.raises(ValueError, match="num_classes"):
        tiny_classifier(num_classes=1)


def test_teacher_with_other_label_set_is_rejected():
    student, teacher = tiny_classifier(num_classes=5), tiny_classifier(num_classes=7)
    with pytest.raises(TeacherError, match="label encoder"):
        check_state_compatible(student.state_dict(), teacher.state_dict(), "t.ckpt")


# ------------------------------------------------------------------------------------------ coffee split
def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = {f"u{i:03d}": "abcde"[i % 5] if i < 400 else "f" for i in range(420)}
    split = stratified_split(labels, seed=7)
    assert split == stratified_split(labels, seed=7)
    assert split != stratified_split(labels, seed=8)
    sets = [set(split[s]) for s in ("train", "valid", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(labels)
    for name, frac in (("valid", 0.15), ("test", 0.15)):
        counts = Counter(labels[u] for u in split[name])
        for label, total in Counter(labels.values()).items():
            assert counts[label] == round(total * frac)
    with pytest.raises(DataPrepError, match="valid_frac"):
        stratified_split(labels, valid_frac=0.6, test_frac=0.5)


def test_prepare_speech_to_intent_on_the_real_orders(tmp_path, s2i_dir):
    csvs = prepare_speech_to_intent(tmp_path / "nowhere", tmp_path / "prep", fallback_folders=[s2i_dir])
    tables = {s: pd.read_csv(p, keep_default_na=False) for s, p in csvs.items()}
    assert list(tables["train"].columns) == ["ID", "duration", "wav", "spk_id", "wrd", "intent"]
    assert sum(len(t) for t in tables.values()) == 619
    ids = [set(t["ID"]) for t in tables.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(set(t["intent"]) == set(tables["train"]["intent"]) for t in tables.values())
    assert tables["train"]["intent"].nunique() == 10
    for name in ("valid", "test"):
        assert abs(len(tables[name]) - 0.15 * 619) <= 10
    assert all(Path(w).is_file() for w in tables["test"]["wav"])
    again = prepare_speech_to_intent(tmp_path / "nowhere", tmp_path / "prep2", fallback_folders=[s2i_dir])
    assert all(csvs[s].read_bytes() == again[s].read_bytes() for s in csvs)  # deterministic
    with pytest.raises(DataPrepError, match="not found"):
        prepare_speech_to_intent(tmp_path / "nowhere", tmp_path / "prep3")


# ------------------------------------------------------------------------------------------ FSC prep
def test_fsc_prep_reads_the_real_layout(tmp_path, fsc_corpus):
    csvs = prepare_fsc(fsc_corpus.parent, tmp_path)  # the parent of fluent_speech_commands_dataset works too
    train = pd.read_csv(csvs["train"])
    assert list(train.columns) == ["ID", "duration", "wav", "spk_id", "wrd", "intent"]
    assert sorted(train["intent"].unique()) == [intent_label("bring", d, "none") for d in DRINKS]
    assert len(train) == 3 * PER_SPLIT["train"] and set(train["spk_id"]) == {"spktrain"}
    assert (train["duration"] <= CROP_S).all() and train["wrd"].str.startswith("bring me a").all()


def test_fsc_manifests_relative_to_data_root_move_with_the_corpus(tmp_path, fsc_corpus):
    """Issue 14 item 5: FSC manifests hold $data_root/... paths, so corpus + manifests can move together."""
    corpus = tmp_path / "corpora"
    shutil.copytree(fsc_corpus, corpus / FSC_DIRNAME)
    csvs = prepare_fsc(corpus, tmp_path / "prep")
    assert all(w.startswith("$data_root/" + FSC_DIRNAME + "/wavs/") for w in pd.read_csv(csvs["test"])["wav"])
    moved = tmp_path / "elsewhere"
    corpus.rename(moved)
    rows = read_manifest(csvs["test"], replacements={"data_root": moved})
    assert rows and all(Path(r["wav"]).is_file() and str(moved) in r["wav"] for r in rows)


# ------------------------------------------------------------------------------------------ end to end
def test_teacher_then_dld_and_accuracy_per_depth(trained):
    root, teacher, dld = trained
    for split in ("train", "valid", "test"):
        assert len(pd.read_csv(root / "prepared" / f"{split}.csv")) == 3 * PER_SPLIT[split]
    encoder_labels = (root / "prepared" / "label_encoder.txt").read_text()
    assert all(f"'bring_{d}_none'" in encoder_labels for d in DRINKS)
    for method in ("teacher", "dld"):
        out = root / method
        sweep = pd.read_csv(out / "depth_sweep_test.csv")
        assert sweep["depth"].tolist() == [1, 2, 3]
        assert sweep["accuracy"].between(0, 100).all() and sweep["encoder_params"].is_monotonic_increasing
        for depth in (1, 2, 3):
            report = (out / f"accuracy_test_n{depth}.txt").read_text()
            assert "Overall Accuracy" in report and "bring_latte_none" in report
        assert (out / "depth_sweep_test.md").read_text().startswith("| method |")
    log = (root / "dld" / "train_log.txt").read_text()
    assert "kd_loss" in log and "acc_n1" in log and "epoch: 2" in log
    assert "kd_loss" not in (root / "teacher" / "train_log.txt").read_text()
    assert math.isclose(dld.test_stats["accuracy"] + dld.test_stats["error_rate"], 100.0)


def test_dld_teacher_frozen_student_initialised_and_trained(trained):
    root, _, dld = trained
    ckpt = find_checkpoint(root / "teacher")
    saved = torch.load(ckpt / "model.ckpt")
    teacher = dld.teacher["model"]
    assert isinstance(teacher, ConformerClassifier) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, saved[name]), f"teacher parameter {name} changed during student training"
    student = dld.modules.model.state_dict()
    assert any(not torch.equal(student[n], saved[n]) for n in saved), "the student did not train"


def test_comparison_of_accuracy(trained, tmp_path):
    from dld_brain.report import write_comparison

    root, _, _ = trained
    md = write_comparison([root / m / "depth_sweep_test.csv" for m in ("teacher", "dld")], tmp_path,
                          metric="accuracy")
    assert "| test_set | depth | enc. params (M) | teacher | dld |" in md.read_text()
    assert (tmp_path / "comparison_test.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ inference
def test_classifier_bundle_round_trip_at_every_depth(trained, fsc_corpus):
    """The bundle the recipe wrote gives the recipe model's own probabilities, file by file, at every depth."""
    import speechbrain as sb

    from dld_brain.inference import DynamicDepthClassifier, load_bundle

    root, _, dld = trained
    slu = load_bundle(root / "dld" / "inference")
    assert isinstance(slu, DynamicDepthClassifier)
    assert slu.labels == [f"bring_{d}_none" for d in DRINKS]
    wavs = prepared_test_wavs(root, fsc_corpus)[:4]
    dld.model.eval()
    for depth in (1, 2, 3):
        got = slu.classify_files(wavs, batch_size=1, depth=depth)
        for wav, (label, prob) in zip(wavs, got):
            sig = torch.from_numpy(soundfile.read(wav, dtype="float32")[0]).unsqueeze(0)
            batch = type("B", (), {"sig": (sig, torch.ones(1))})()
            feats, lens = dld.compute_features(batch, sb.Stage.TEST)
            with dld.model.encoder.at_depth(depth), torch.no_grad():
                probs = dld.model(feats, lens)[0].exp()
            assert label == slu.labels[int(probs.argmax())]
            assert math.isclose(prob, float(probs.max()), rel_tol=1e-4)
    label, prob = slu.classify_file(wavs[0], depth=3)  # one file alone = its entry in the batched call
    assert label == got[0][0] and math.isclose(prob, got[0][1], rel_tol=1e-4)


def test_classifier_cli_prints_label_and_probability(trained, fsc_corpus):
    root, _, _ = trained
    wavs = prepared_test_wavs(root, fsc_corpus)[:2]
    out = subprocess.run([sys.executable, "-m", "dld_brain.transcribe", "--model", str(root / "dld" / "inference"),
                          "--depth", "2", *wavs], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == wavs
    for line in lines:
        _, label, prob = line.split("\t")
        assert label in {f"bring_{d}_none" for d in DRINKS} and 0.0 < float(prob) <= 1.0


# ------------------------------------------------------------------------------------------ bad inputs
def test_unknown_intent_in_test_csv_is_named(tmp_path, s2i_dir, capsys):
    dataset = build_fsc(tmp_path / "data", s2i_dir)
    test_csv = dataset / "data" / "test_data.csv"
    rows = list(csv.reader(open(test_csv, newline="")))
    rows[1][5] = "cappuccino"  # an object training never shows
    write_fsc_csv(test_csv, [r[1:] for r in rows[1:]])
    code, err = guarded_run(fsc_args("teacher", tmp_path / "exp", dataset), capsys)
    assert code == 2 and "'bring_cappuccino_none'" in err and str(test_csv) in err and "Traceback" not in err


def test_unknown_label_in_a_prepared_manifest_is_named(trained, fsc_corpus, tmp_path, capsys):
    """The runner's own check (e.g. a manifest edited or written by hand after preparation)."""
    root, _, _ = trained
    test = pd.read_csv(root / "prepared" / "test.csv")
    test.loc[0, "intent"] = "bring_tea_none"
    bad = tmp_path / "test.csv"
    test.to_csv(bad, index=False)
    code, err = guarded_run([str(HP / "teacher.yaml"), f"--experiment_root={tmp_path}", "--skip_training=True",
                             f"--prep_folder={root / 'prepared'}", f"--data_folder={fsc_corpus}",
                             "--fallback_data_folders=[]", f"--test_csvs={{test: {bad}}}", *TINY_SLU], capsys)
    # prep is up to date (skipped), so the error comes from the label check of the test manifest
    assert code == 2 and "'bring_tea_none'" in err and str(bad) in err


def test_missing_wav_is_named_by_the_cli(tmp_path, s2i_dir):
    dataset = build_fsc(tmp_path / "data", s2i_dir)
    victim = next((dataset / "wavs" / "speakers" / "spkvalid").glob("*.wav"))
    victim.unlink()
    proc = subprocess.run([sys.executable, str(FSC_TRAIN), *fsc_args("teacher", tmp_path / "exp", dataset)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(victim) in proc.stderr and "valid_data.csv" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", ["", ",path,speakerId,transcription,action,object,location\n"])
def test_empty_csv_is_named(tmp_path, s2i_dir, capsys, content):
    dataset = build_fsc(tmp_path / "data", s2i_dir)
    (dataset / "data" / "valid_data.csv").write_text(content)
    code, err = guarded_run(fsc_args("teacher", tmp_path / "exp", dataset), capsys)
    assert code == 2 and "valid_data.csv" in err and ("empty" in err or "no rows" in err)


def test_missing_csv_and_missing_corpus_are_named(tmp_path, s2i_dir, capsys):
    dataset = build_fsc(tmp_path / "data", s2i_dir)
    (dataset / "data" / "test_data.csv").unlink()
    code, err = guarded_run(fsc_args("teacher", tmp_path / "exp", dataset), capsys)
    assert code == 2 and "test_data.csv" in err and "not found" in err
    code, err = guarded_run(fsc_args("teacher", tmp_path / "exp", tmp_path / "nowhere"), capsys)
    assert code == 2 and "Fluent Speech Commands not found" in err and str(tmp_path / "nowhere") in err


def test_num_classes_must_match_the_training_labels(trained, fsc_corpus, tmp_path, capsys):
    root, _, _ = trained
    code, err = guarded_run([str(HP / "teacher.yaml"), f"--experiment_root={tmp_path}",
                             f"--prep_folder={root / 'prepared'}", f"--data_folder={fsc_corpus}",
                             "--fallback_data_folders=[]",
                             *[t for t in TINY_SLU if not t.startswith("--num_classes=")], "--num_classes=4"],
                            capsys)
    assert code == 2 and "has 3 intent labels but num_classes is 4" in err


def test_depth_switchable_batch_norm_follows_the_executed_depth():
    """Training at depth 2 updates only the pooled-feature norm of depth 2; one utterance uses running stats."""
    model = tiny_classifier().train()
    feats, lens = torch.randn(4, 60, 20), torch.tensor([1.0, 0.9, 0.8, 0.7])
    before = [norm.running_mean.clone() for norm in model.pool_norms]
    model(feats, lens, layers=[0, 3])
    changed = [not torch.equal(b, n.running_mean) for b, n in zip(before, model.pool_norms)]
    assert changed == [False, True, False, False]
    assert model(feats[:1], lens[:1], layers=[1]).shape == (1, 5)  # batch of one in training mode
    model.eval()
    with model.encoder.at_depth(3):
        out = model(feats, lens)
    assert len(model.encoder.last_layers) == 3 and torch.isfinite(out).all()
    assert tiny_classifier(pool_norm="none").pool_norms is None
    with pytest.raises(ValueError, match="pool_norm"):
        tiny_classifier(pool_norm="layer")


def test_three_conv_blocks_give_8x_fewer_frames():
    feats, lens = torch.randn(2, 160, 20), torch.ones(2)
    with torch.no_grad():
        assert tiny_classifier().encode(feats, lens).shape[1] == 40
        eight = tiny_classifier(cnn_channels=[16, 8, 8])
        assert eight.encode(feats, lens).shape[1] == 20 and eight(feats, lens).shape == (2, 5)
    assert ConformerClassifier(**eight.config).state_dict().keys() == eight.state_dict().keys()
    with pytest.raises(ValueError, match="cnn_channels"):
        tiny_classifier(cnn_channels=[])


def test_attention_pooling_weights_only_the_valid_frames():
    torch.manual_seed(0)
    x, scores, lens = torch.randn(2, 10, 3), torch.randn(2, 10), torch.tensor([1.0, 0.4])
    garbage = x.clone()
    garbage[1, 4:] = 1e6
    out = masked_attention_pool(garbage, lens, scores)
    assert torch.allclose(out[0], (torch.softmax(scores[0], 0)[:, None] * x[0]).sum(0), atol=1e-5)
    assert torch.allclose(out[1], (torch.softmax(scores[1, :4], 0)[:, None] * x[1, :4]).sum(0), atol=1e-5)
    model = tiny_classifier(pooling="attention")
    with torch.no_grad():
        assert model(torch.randn(3, 80, 20), torch.tensor([1.0, 0.6, 0.3])).shape == (3, 5)
    assert ConformerClassifier(**model.config).state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="pooling"):
        tiny_classifier(pooling="max")


def test_frame_posteriors_average_the_valid_frames_posteriors():
    torch.manual_seed(0)
    model = tiny_classifier(pooling="frame_posteriors", pool_norm="none")
    feats, lens = torch.randn(2, 80, 20), torch.tensor([1.0, 0.5])
    with torch.no_grad():
        out = model(feats, lens)
        hidden = model.encode(feats, lens)
        for i in range(2):
            n = round(float(lens[i]) * hidden.shape[1])
            expected = torch.softmax(model.classifier(hidden[i, :n]), -1).mean(0).log()
            assert torch.allclose(out[i], expected, atol=1e-5)
    with pytest.raises(ValueError, match="pool_norm: none"):
        tiny_classifier(pooling="frame_posteriors")


def test_depth_stats_share_scale_and_shift_and_keep_statistics_per_depth():
    model = tiny_classifier()  # default: depth_stats
    assert all(n.weight is model.pool_norms[0].weight and n.bias is model.pool_norms[0].bias
               for n in model.pool_norms)
    rebuilt = ConformerClassifier(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.pool_norms[3].weight is rebuilt.pool_norms[0].weight  # tying survives a reload
    untied = tiny_classifier(pool_norm="depth_bn")
    assert untied.pool_norms[1].weight is not untied.pool_norms[0].weight
    assert len(list(untied.parameters())) == len(list(model.parameters())) + 2 * 3


def test_calibration_sets_every_depths_statistics_from_eval_mode_pooled_vectors():
    torch.manual_seed(0)
    model = tiny_classifier(dropout=0.3).train()
    batches = [(torch.randn(4, 60, 20), torch.tensor([1.0, 0.9, 0.8, 0.7])) for _ in range(3)]
    model.calibrate_pool_norms(batches)
    assert model.training  # the mode is restored
    model.eval()
    for depth in range(1, 5):
        with model.encoder.at_depth(depth), torch.no_grad():
            pooled = torch.cat([model.pooled_vector(f, lens) for f, lens in batches])
            normed = torch.cat([model.pool(f, lens) for f, lens in batches])
        norm = model.pool_norms[depth - 1]
        assert torch.allclose(norm.running_mean, pooled.mean(0), atol=1e-6)
        assert torch.allclose(norm.running_var, pooled.var(0), atol=1e-6)
        assert normed.mean(0).abs().max() < 1e-3  # standardised on the calibration set (scale 1, shift 0)
    before = [n.running_mean.clone() for n in model.pool_norms]
    model.calibrate_pool_norms(batches[:1], layer_sets=[[0, 2]])  # one layer set: only its depth changes
    assert [not torch.equal(b, n.running_mean) for b, n in zip(before, model.pool_norms)] == [False, True, False, False]
    with pytest.raises(ValueError, match="at least one batch"):
        model.calibrate_pool_norms([])
    tiny_classifier(pool_norm="none").calibrate_pool_norms(batches)  # nothing to calibrate: no error


def test_recipe_calibrates_the_validated_depths_and_the_bundle_at_every_depth(trained):
    """The teacher validates at full depth only: its checkpoint calibrates that depth; its inference bundle
    (what users load) holds statistics for every depth."""
    root, _, _ = trained

    def tracked(state):
        return [int(state[f"pool_norms.{k}.num_batches_tracked"]) for k in range(3)]

    checkpoint = tracked(torch.load(find_checkpoint(root / "teacher") / "model.ckpt"))
    assert checkpoint[-1] > 0
    assert all(t > 0 for t in tracked(load_weights(root / "teacher" / "inference" / "model.ckpt")))


def test_coffee_order_comparison_end_to_end(tmp_path, s2i_dir):
    """The README's main SLU command on real orders, shrunk: teacher and RD side by side, RDLD and DLD after
    the teacher (8x front-end, duration-bucketed batches, recalibrated pool norms), then the comparison."""
    root = tmp_path / "exp"
    tiny = ["--num_layers=3", "--d_model=32", "--nhead=2", "--d_ffn=64", "--kernel_size=3", "--number_of_epochs=1",
            "--max_per_class=5", "--check_audio=header", f"--data_folder={s2i_dir}", "--download=False"]
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "SpeechToIntent" / "run_comparison.py"),
                           f"--experiment_root={root}", "--", *tiny], capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (root / "comparison.md").read_text()
    assert "| teacher | rd | rdld | dld |" in table and "Wall time" in table
    timing = json.loads((root / "wall_time.json").read_text())
    assert timing["jobs"] == 2 and set(timing["wall_time_s"]) == {"teacher", "rd", "rdld", "dld", "total"}
    for method in ("teacher", "rd", "rdld", "dld"):
        sweep = pd.read_csv(root / method / "depth_sweep_test.csv")
        assert sweep["depth"].tolist() == [1, 2, 3] and sweep["accuracy"].between(0, 100).all()
    assert "kd_loss" in (root / "dld" / "train_log.txt").read_text()
    assert "kd_loss" not in (root / "rdld" / "train_log.txt").read_text()  # RDLD: the teacher's init, no KD
    model = load_weights(root / "dld" / "inference" / "model.ckpt")
    assert model["frontend.convblock_2.convs.conv_0.conv.weight"].shape[0] == 32  # the 8x front-end's 3rd block


def test_coffee_rdld_is_dld_without_the_teacher_term():
    """Issue 15 item 5: the coffee-order RDLD differs from DLD only in kd_weight (same init, epochs, lr)."""
    from dld_brain.hparams import load_hparams

    dld, rdld = (load_hparams(str(REPO / "hparams" / "slu" / f"{m}.yaml"), "") for m in ("dld", "rdld"))
    plain = (int, float, str, bool, type(None))
    differ = {k for k in dld if isinstance(dld[k], plain) and dld[k] != rdld.get(k) and "/" not in str(dld[k])}
    assert differ == {"method", "kd_weight"} and rdld["kd_weight"] == 0.0 and rdld["init_from_teacher"]


def test_seeds_report_means_intervals_and_paired_t(tmp_path):
    """The coffee-order summary over seeds: mean and t-interval per depth, paired t per pair, missing runs."""
    from dld_brain.report import write_seeds_report

    for seed in (1, 2, 3):
        for method, offset in (("rd", 0.0), ("dld", 10.0 + seed)):
            folder = tmp_path / f"seed{seed}" / method
            folder.mkdir(parents=True)
            pd.DataFrame({"method": method, "test_set": "test", "depth": [1, 2], "encoder_params": [10, 20],
                          "accuracy": [30.0 + offset + seed, 50.0 + offset + seed]}).to_csv(
                folder / "depth_sweep_test.csv", index=False)
    md = write_seeds_report(tmp_path, [1, 2, 3, 4], ["rd", "dld"], metric="accuracy", pairs=[("dld", "rd")])
    text = md.read_text()
    assert "missing: seed4/rd, seed4/dld" in text and (tmp_path / "summary_test.png").is_file()
    summary = pd.read_csv(tmp_path / "summary.csv")
    dld1 = summary[(summary["method"] == "dld") & (summary["depth"] == 1)].iloc[0]
    assert dld1["n"] == 3 and dld1["mean"] == pytest.approx(44.0) and dld1["ci_low"] < 44.0 < dld1["ci_high"]
    sig = pd.read_csv(tmp_path / "significance.csv")
    assert sig["run_diff"].tolist() == pytest.approx([12.0, 12.0]) and (sig["run_ci_low"] > 0).all()
