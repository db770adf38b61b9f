"""The CUDA path, run on a GPU machine (skipped without one): the gated encoder and the classifier give the
CPU's outputs at every depth, skipped layers are not computed and get no gradient on the GPU, bf16 autocast
keeps CTC, KD and the classifier finite, and the FSDD recipe (teacher in fp32, then DLD in bf16) and the SLU
recipe (pool norms recalibrated on the GPU) train and sweep there into bundles that give the same
posteriors on GPU and CPU.

Run there with ``DLD_SHARED_DATA=<copy of ../shared/data> pytest tests/test_cuda.py`` (scripts/gpu_check.sh).
"""

import math

import pandas as pd
import pytest
import torch
from conftest import REPO, tiny

from test_slu import fsc_args, fsc_corpus, load_recipe, s2i_dir  # noqa: F401  (FSC-layout corpus of real orders)

from dld_brain.inference import DynamicDepthASR, DynamicDepthClassifier
from dld_brain.lobes import ConformerCTC
from dld_brain.lobes.classifier import ConformerClassifier
from dld_brain.losses import ctc_posterior_kl, posterior_kl
from dld_brain.recipe import run_asr_recipe
from dld_brain.slu_recipe import run_slu_recipe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = dict(n_mels=40, d_model=64, num_layers=4, nhead=4, d_ffn=128, kernel_size=7, dropout=0.0)


@pytest.fixture(autouse=True)
def exact_fp32():
    """Compare GPU and CPU in true fp32: TF32 convolutions/matmuls would differ by ~1e-3 by design."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def batch(seed=0, b=3, t=240):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, t, SMALL["n_mels"], generator=gen)
    lens = torch.tensor([1.0, 0.8, 0.55])[:b]
    return feats, lens


@pytest.mark.parametrize("cls", [ConformerCTC, ConformerClassifier])
def test_gpu_gives_the_cpu_outputs_at_every_depth(cls):
    torch.manual_seed(0)
    extra = {"vocab_size": 12} if cls is ConformerCTC else {"num_classes": 5}
    cpu = cls(**SMALL, **extra).eval()
    gpu = cls(**SMALL, **extra).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    feats, lens = batch()
    for depth in range(1, SMALL["num_layers"] + 1):
        with torch.no_grad(), cpu.encoder.at_depth(depth), gpu.encoder.at_depth(depth):
            want = cpu(feats, lens)
            got = gpu(feats.cuda(), lens.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


def test_skipped_layers_are_not_computed_on_the_gpu():
    torch.manual_seed(0)
    model = ConformerCTC(**SMALL, vocab_size=12, drop_prob=0.5, gate_seed=3).cuda().train()
    feats, lens = batch()
    seen = set()
    for _ in range(6):
        model.zero_grad(set_to_none=True)
        model(feats.cuda(), lens.cuda()).sum().backward()
        ran = set(model.encoder.last_layers)
        seen.add(len(ran))
        for i, layer in enumerate(model.encoder.layers):
            grads = [p.grad for p in layer.parameters()]
            if i in ran:
                assert all(g is not None and torch.isfinite(g).all() for g in grads)
            else:
                assert all(g is None for g in grads), f"layer {i} was skipped but got a gradient"
    assert len(seen) > 1  # the gates really vary between steps


def test_bf16_autocast_keeps_ctc_kd_and_classifier_finite():
    torch.manual_seed(0)
    student = ConformerCTC(**SMALL, vocab_size=12, drop_prob=0.5).cuda().train()
    teacher = ConformerCTC(**SMALL, vocab_size=12).cuda().eval()
    classifier = ConformerClassifier(**SMALL, num_classes=5, drop_prob=0.5).cuda().train()
    feats, lens = (x.cuda() for x in batch())
    targets = torch.randint(1, 12, (3, 6), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        log_probs = student(feats, lens)
        with torch.no_grad():
            teacher_log_probs = teacher(feats, lens)
        ctc = torch.nn.functional.ctc_loss(log_probs.float().transpose(0, 1), targets,
                                           (lens * log_probs.shape[1]).round().long(), torch.full((3,), 6),
                                           blank=0, zero_infinity=True)
        kd = ctc_posterior_kl(log_probs, teacher_log_probs, lens)
        class_log_probs = classifier(feats, lens)
        nll = torch.nn.functional.nll_loss(class_log_probs, torch.tensor([0, 1, 2], device="cuda"))
        kl = posterior_kl(class_log_probs, class_log_probs.detach().roll(1, dims=0))
    assert log_probs.dtype == torch.float32 and class_log_probs.dtype == torch.float32  # heads are float32
    for value in (ctc, kd, nll, kl):
        assert math.isfinite(float(value.detach())) and float(value.detach()) >= 0
    (ctc + kd + nll + kl).backward()
    grads = [p.grad for m in (student, classifier) for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory, fsdd_dir):
    """Tiny FSDD teacher (fp32) then DLD (bf16), both trained and swept on the GPU, on real audio."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsdd_train", REPO / "recipes" / "FSDD" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    root = tmp_path_factory.mktemp("fsdd_gpu")
    hp = REPO / "hparams" / "fsdd"
    common = [f"--experiment_root={root}", f"--data_folder={fsdd_dir}"]
    run_asr_recipe([str(hp / "teacher.yaml"), *common, *tiny(device="cuda", number_of_epochs=2)], recipe.prepare)
    dld = run_asr_recipe([str(hp / "dld.yaml"), *common, *tiny(device="cuda", number_of_epochs=2),
                          "--precision=bf16"], recipe.prepare)
    return root, dld


def test_fsdd_recipe_trains_and_sweeps_on_the_gpu_in_bf16(gpu_runs):
    root, dld = gpu_runs
    assert next(dld.modules.model.parameters()).device.type == "cuda"
    log = (root / "dld" / "train_log.txt").read_text()
    kd = [float(part.split("kd_loss: ")[1].split(" ")[0].rstrip(",")) for part in log.splitlines()
          if "kd_loss: " in part]
    assert len(kd) == 2 and all(math.isfinite(v) and v >= 0 for v in kd)
    sweep = pd.read_csv(root / "dld" / "depth_sweep_test.csv")
    assert sweep["depth"].tolist() == [1, 2, 3, 4]
    assert (sweep["encoder_latency_ms"] > 0).all()


def test_bundle_gives_the_same_posteriors_on_gpu_and_cpu(gpu_runs):
    root, _ = gpu_runs
    bundle = root / "dld" / "inference"
    on_gpu = DynamicDepthASR.from_hparams(source=bundle, run_opts={"device": "cuda"})
    on_cpu = DynamicDepthASR.from_hparams(source=bundle, run_opts={"device": "cpu"})
    wavs = pd.read_csv(root / "prepared" / "test.csv")["wav"].tolist()[:4]
    for depth in (1, 2, 4):
        for wav in wavs:
            sig = on_cpu.read_audio(wav).unsqueeze(0)
            with torch.no_grad():
                got = on_gpu._log_probs(sig, torch.ones(1), depth=depth)
                want = on_cpu._log_probs(sig, torch.ones(1), depth=depth)
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)
        assert on_gpu.transcribe_files(wavs, depth=depth) == on_cpu.transcribe_files(wavs, depth=depth)


def test_slu_recipe_recalibrates_and_sweeps_on_the_gpu(tmp_path, fsc_corpus):  # noqa: F811
    prepare = load_recipe().prepare
    run_slu_recipe(fsc_args("teacher", tmp_path, fsc_corpus, "--device=cuda"), prepare)
    dld = run_slu_recipe(fsc_args("dld", tmp_path, fsc_corpus, "--device=cuda", "--precision=bf16",
                                  "--number_of_epochs=2"), prepare)
    assert next(dld.model.parameters()).device.type == "cuda"
    sweep = pd.read_csv(tmp_path / "dld" / "depth_sweep_test.csv")
    assert sweep["depth"].tolist() == [1, 2, 3] and sweep["accuracy"].between(0, 100).all()
    bundle = tmp_path / "dld" / "inference"
    on_gpu = DynamicDepthClassifier.from_hparams(source=bundle, run_opts={"device": "cuda"})
    on_cpu = DynamicDepthClassifier.from_hparams(source=bundle, run_opts={"device": "cpu"})
    wavs = pd.read_csv(tmp_path / "prepared" / "test.csv")["wav"].tolist()[:4]
    for depth in (1, 2, 3):
        got, want = on_gpu.classify_files(wavs, depth=depth), on_cpu.classify_files(wavs, depth=depth)
        assert [label for label, _ in got] == [label for label, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)
