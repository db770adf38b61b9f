"""New voices (issue 15 item 6): synthetic noises / impulse responses, 1-7 digit training strings, the TTS
probe and the voices recipe. Select with ``pytest -k new_voices``."""

import filecmp
import shutil

import pandas as pd
import pytest
import torch
from conftest import REPO, tiny

from dld_brain.data import synthetic_channels as sc
from dld_brain.data.fsdd import prepare_fsdd
from dld_brain.data.manifest import DataPrepError

HP = REPO / "hparams" / "fsdd"


def _band_power(x: torch.Tensor, sample_rate: int, low: float, high: float) -> float:
    spectrum = torch.fft.rfft(x).abs().pow(2)
    freqs = torch.fft.rfftfreq(x.numel(), 1.0 / sample_rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].mean())


# ------------------------------------------------------------------------------------ synthetic tensors
@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, -1.0])
def test_new_voices_coloured_noise_has_its_spectral_slope(exponent):
    gen = torch.Generator().manual_seed(0)
    noise = sc.coloured_noise(2 ** 16, exponent, gen)
    assert noise.shape == (2 ** 16,) and noise.dtype == torch.float32
    assert abs(float(noise.pow(2).mean().sqrt()) - 1.0) < 1e-3
    # power per octave band: an octave up changes the power density by 2 ** -exponent
    low, high = _band_power(noise, 16000, 500, 1000), _band_power(noise, 16000, 2000, 4000)
    measured = torch.log2(torch.tensor(low / high)).item() / 2  # two octaves apart
    assert abs(measured - exponent) < 0.25


def test_new_voices_noise_is_seeded():
    a = sc.coloured_noise(1000, 1.0, torch.Generator().manual_seed(5))
    b = sc.coloured_noise(1000, 1.0, torch.Generator().manual_seed(5))
    c = sc.coloured_noise(1000, 1.0, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_new_voices_hum_and_babble_are_where_expected():
    gen = torch.Generator().manual_seed(1)
    hum = sc.hum_noise(16000, 16000, 50.0, gen)
    assert _band_power(hum, 16000, 45, 1005) > 100 * _band_power(hum, 16000, 2000, 8000)
    babble = sc.babble_like_noise(32000, 16000, gen)
    assert _band_power(babble, 16000, 200, 3000) > 1e3 * _band_power(babble, 16000, 5000, 8000)


@pytest.mark.parametrize("rt60", [0.1, 0.5, 0.9])
def test_new_voices_room_ir_direct_path_first_and_decays(rt60):
    ir = sc.synthetic_room_ir(16000, rt60, drr_db=3.0, generator=torch.Generator().manual_seed(2))
    assert ir.numel() == int(rt60 * 16000)
    assert int(ir.abs().argmax()) == 0 and float(ir[0]) == 1.0  # AddReverb aligns on the peak
    tail = ir[1:]
    drr = 10 * torch.log10(1.0 / tail.pow(2).sum())
    assert abs(float(drr) - 3.0) < 0.5 or float(tail.abs().max()) <= 0.9
    quarter = tail.numel() // 4
    assert tail[:quarter].pow(2).sum() > 100 * tail[-quarter:].pow(2).sum()  # >= 20 dB down by the end
    with pytest.raises(ValueError):
        sc.synthetic_room_ir(16000, 0.0)


def test_new_voices_mic_ir_band_limits_and_peaks_in_the_centre():
    for seed in range(5):
        fir = sc.synthetic_mic_ir(16000, generator=torch.Generator().manual_seed(seed))
        assert fir.shape == (511,) and int(fir.abs().argmax()) == 255 and float(fir.abs().max()) == 1.0
        response = torch.fft.rfft(fir, n=4096).abs()
        freqs = torch.fft.rfftfreq(4096, 1 / 16000)
        mid = response[(freqs > 700) & (freqs < 1500)].mean()
        assert response[freqs < 30].mean() < 0.2 * mid  # high-pass edge at >= 60 Hz
        assert response[freqs > 7900].mean() < 0.2 * mid  # low-pass edge below Nyquist
    with pytest.raises(ValueError):
        sc.synthetic_mic_ir(16000, 256)


def test_new_voices_manifests_drive_speechbrain_augmenters(tmp_path):
    from speechbrain.augment.time_domain import AddNoise, AddReverb

    csvs = sc.write_channel_manifests(tmp_path / "ch", noises_per_kind=1, num_rooms=3, num_mics=3,
                                      noise_seconds=3.0)
    for name, rows in (("noise", 7), ("rooms", 3), ("mics", 3)):
        table = pd.read_csv(csvs[name])
        assert list(table.columns) == ["ID", "duration", "wav", "wav_format", "wav_opts"] and len(table) == rows
    stamp = csvs["noise"].stat().st_mtime_ns
    assert sc.write_channel_manifests(tmp_path / "ch", noises_per_kind=1, num_rooms=3, num_mics=3,
                                      noise_seconds=3.0) == csvs
    assert csvs["noise"].stat().st_mtime_ns == stamp  # same options: not rewritten

    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    clean = (0.3 * torch.sin(2 * torch.pi * 440 * t)).repeat(4, 1)
    noisy = AddNoise(str(csvs["noise"]), snr_low=10, snr_high=10)(clean, torch.ones(4))
    # AddNoise scales the clean part by 1 - a and the noise to a * rms(clean), a = 1 / (10**0.5 + 1)
    a = 1 / (10 ** 0.5 + 1)
    snr = 10 * torch.log10(((1 - a) * clean).pow(2).mean(1) / (noisy - (1 - a) * clean).pow(2).mean(1))
    assert torch.allclose(snr, torch.full((4,), 20 * torch.log10(torch.tensor((1 - a) / a))), atol=0.5)
    for name in ("rooms", "mics"):
        out = AddReverb(str(csvs[name]))(clean)
        assert out.shape == clean.shape and not torch.allclose(out, clean)
        # aligned on the direct path / FIR centre: the tone's phase is kept (correlation at lag 0 is high)
        corr = torch.nn.functional.cosine_similarity(out[:, 4000:12000], clean[:, 4000:12000], dim=1)
        assert (corr > 0.5).all()


def test_new_voices_yaml_augmenter_changes_the_wave(tmp_path):
    from dld_brain.augment import apply_augment
    from dld_brain.hparams import load_hparams

    hparams = load_hparams(HP / "voices.yaml", {"experiment_root": str(tmp_path), "data_folder": str(tmp_path)})
    sc.write_channel_manifests(hparams["channel_folder"], seed=hparams["channel_seed"])
    assert hparams["train_digits"] == [1, 7]
    torch.manual_seed(3)
    x = 0.1 * torch.randn(4, 16000)
    changed = 0
    for _ in range(10):
        y, lens = apply_augment(hparams["wav_augment"], x.clone(), torch.ones(4))
        assert y.shape[0] == 4 and lens.shape == (4,) and torch.isfinite(y).all()
        changed += y.shape != x.shape or not torch.allclose(y, x)
    assert changed >= 8  # unchanged only when speed 100 % and no channel augmentation (p = 0.15 / 8)


# --------------------------------------------------------------------------------------------- data
def test_new_voices_train_digits_give_isolated_digits_and_keep_valid_test(tmp_path, fsdd_dir):
    common = dict(fallback_folders=(), download=False, takes_per_digit=4, train_copies=1)
    default = prepare_fsdd(fsdd_dir, tmp_path / "default", **common)
    wide = prepare_fsdd(fsdd_dir, tmp_path / "wide", train_digits=(1, 7), isolated_test=2, **common)
    train = pd.read_csv(wide["train"])
    lengths = train["wrd"].str.split().str.len()
    assert lengths.min() == 1 and lengths.max() <= 7 and (lengths == 1).sum() >= 3
    assert pd.read_csv(default["train"])["wrd"].str.split().str.len().min() >= 3
    # every training clip is used once per copy, as before: the same number of digits
    assert lengths.sum() == pd.read_csv(default["train"])["wrd"].str.split().str.len().sum()
    for split in ("valid", "test"):  # byte for byte the default sets (manifests up to the folder, audio)
        a, b = pd.read_csv(default[split]), pd.read_csv(wide[split])
        assert a.drop(columns="wav").equals(b.drop(columns="wav"))
        for wa, wb in zip(a["wav"], b["wav"]):
            assert filecmp.cmp(wa, wb, shallow=False)
    iso = pd.read_csv(wide["test_isolated"])
    assert len(iso) == 2 * 10 * 2 and (iso["wrd"].str.split().str.len() == 1).all()  # 2 takes x 10 digits x 2 spk
    assert set(iso["spk_id"]) == set(pd.read_csv(default["test"])["spk_id"])
    # the same options again: skipped; train_digits equal to the default range: the default prep
    assert prepare_fsdd(fsdd_dir, tmp_path / "wide", train_digits=(1, 7), isolated_test=2, **common) == wide
    same = prepare_fsdd(fsdd_dir, tmp_path / "same", train_digits=(3, 7), **common)
    assert pd.read_csv(same["train"]).drop(columns="wav").equals(pd.read_csv(default["train"]).drop(columns="wav"))
    with pytest.raises(DataPrepError, match="train_digits"):
        prepare_fsdd(fsdd_dir, tmp_path / "bad", train_digits=(0, 7), **common)


# --------------------------------------------------------------------------------------------- probe
def test_new_voices_tts_digit_strings_cover_every_length():
    from dld_brain.data.tts_probe import digit_strings

    strings = digit_strings(12, seed=1)
    assert strings[:10] == [[d] for d in range(10)]  # every digit alone once
    assert sorted(len(s) for s in strings[10:]) == sorted(list(range(2, 8)) * 2)
    assert digit_strings(12, seed=1) == strings and digit_strings(12, seed=2)[10:] != strings[10:]
    assert all(len(s) > 1 for s in digit_strings(6, seed=1, isolated=False))


def test_new_voices_tts_probe_writes_a_scorable_manifest(tmp_path):
    from dld_brain.data.tts_probe import available_voices, write_tts_probe

    voices = available_voices()[:1]
    if not voices:
        pytest.skip("no Debian TTS engine installed (espeak-ng, flite, festival)")
    csv = write_tts_probe(tmp_path / "probe", per_voice=1, voices=voices)
    table = pd.read_csv(csv)
    assert list(table.columns) == ["ID", "duration", "wav", "spk_id", "wrd"] and len(table) == 11
    assert table["wrd"].head(10).tolist() == ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN",
                                              "EIGHT", "NINE"]
    import soundfile

    for wav in table["wav"]:
        info = soundfile.info(wav)
        assert info.samplerate == 16000 and info.channels == 1 and info.frames > 1600


# ------------------------------------------------------------------------------------ integration
def test_new_voices_recipe_on_real_audio(tmp_path, fsdd_dir):
    """hparams/fsdd/voices.yaml end to end on real FSDD audio with a tiny model (well under 30 s)."""
    from test_fsdd_recipe import load_recipe

    from dld_brain.recipe import run_asr_recipe

    recipe = load_recipe()
    args = [str(HP / "voices.yaml"), f"--experiment_root={tmp_path}", f"--data_folder={fsdd_dir}",
            *tiny(sweep_depths="[4]", isolated_test=1, fold=0, num_folds=6)]
    run_asr_recipe(args, recipe.prepare, recipe.configure)
    prepared = tmp_path / "prepared"
    assert (pd.read_csv(prepared / "train.csv")["wrd"].str.split().str.len() == 1).any()
    assert all((prepared / "channels" / f"{n}.csv").is_file() for n in ("noise", "rooms", "mics"))
    for test_set in ("test", "test_isolated"):
        sweep = pd.read_csv(tmp_path / "teacher" / f"depth_sweep_{test_set}.csv")
        assert sweep["depth"].tolist() == [4] and {"WER", "WER_beam"} <= set(sweep.columns)
    shutil.rmtree(tmp_path / "teacher" / "save")


# ------------------------------------------------------------------------------------------- report
def _fake_run(folder, test_set, wer_by_id, refs):
    """A finished run's sweep CSV and SpeechBrain wer file at depth 6 from per-utterance hypotheses."""
    from speechbrain.utils.metric_stats import ErrorRateStats

    folder.mkdir(parents=True, exist_ok=True)
    stats = ErrorRateStats()
    stats.append(list(wer_by_id), [h.split() for h in wer_by_id.values()], [refs[i].split() for i in wer_by_id])
    with open(folder / f"wer_{test_set}_n6.txt", "w") as handle:
        stats.write_stats(handle)
    wer = stats.summarize("error_rate")
    pd.DataFrame([{"method": "teacher", "test_set": test_set, "depth": 6, "WER": wer, "WER_beam": wer / 2,
                   "encoder_params": 100}]).to_csv(folder / f"depth_sweep_{test_set}.csv", index=False)
    return wer


def test_new_voices_report_pairs_configs_over_folds(tmp_path):
    from dld_brain import new_voices as nv

    refs = {"a1": "ONE", "a2": "TWO THREE", "b1": "FOUR FIVE SIX", "b2": "SEVEN"}
    manifest = tmp_path / "tts.csv"
    pd.DataFrame({"ID": list(refs), "spk_id": ["flite:kal", "flite:kal", "espeak-ng:en-us", "espeak-ng:en-us"],
                  "wrd": list(refs.values()), "wav": "x", "duration": 1.0}).to_csv(manifest, index=False)
    good = dict(refs)
    bad = {"a1": "ONE ONE", "a2": "TWO", "b1": "FOUR FIVE SIX", "b2": "SEVEN"}  # 2 errors in 7 words
    worse = {"a1": "NINE", "a2": "TWO", "b1": "FOUR", "b2": "SEVEN"}  # 4 errors
    for fold, (voices, default) in enumerate([(good, bad), (good, worse), (bad, worse)]):
        _fake_run(nv.run_folder(tmp_path, "voices", fold), "tts", voices, refs)
        _fake_run(nv.run_folder(tmp_path, "default", fold), "tts", default, refs)
    nv.run_folder(tmp_path, "default", 3).mkdir(parents=True)  # unfinished: left out
    runs = nv.collect_voice_runs(tmp_path, ["voices", "default"], [0, 1, 2, 3])
    assert len(runs) == 6 and set(runs["fold"]) == {0, 1, 2}
    summary = nv.config_summary(runs).set_index("config")
    assert summary.loc["voices", "mean"] == pytest.approx(100 * 2 / 7 / 3)
    assert summary.loc["default", "mean"] == pytest.approx(100 * (2 + 4 + 4) / 7 / 3)
    diffs = nv.config_differences(runs, "voices", "default").set_index("metric")
    assert diffs.loc["WER", "runs"] == 3
    assert diffs.loc["WER", "run_diff"] == pytest.approx(100 * (-2 - 4 - 2) / 7 / 3)
    assert diffs.loc["WER_beam", "run_diff"] == pytest.approx(diffs.loc["WER", "run_diff"] / 2)
    groups = nv.collect_probe_groups(tmp_path, ["voices", "default"], [0, 1, 2], manifest)
    kal = groups[(groups["group"] == "flite:kal") & (groups["config"] == "default") & (groups["fold"] == 1)]
    assert kal["WER"].iloc[0] == pytest.approx(100 * 2 / 3, abs=0.01)  # NINE for ONE, THREE deleted
    isolated = groups[(groups["group"] == "isolated") & (groups["config"] == "voices")]
    assert sorted(isolated["WER"]) == pytest.approx([0, 0, 50])  # fold 2: ONE ONE for ONE (1 of 2 words)
    text = nv.voices_markdown(runs, groups, timing=pd.DataFrame(
        {"config": ["voices", "default", "voices"], "fold": [0, 0, 0], "wall_s": [6.0, 5.0, 4.0],
         "cpu_s": [5.0, 4.0, 4.0]}))  # voices fold 0 killed after 6 s, resumed for 4 s
    assert "3 leave-one-speaker-out folds" in text and "Paired difference voices - default" in text
    assert "flite:kal" in text and "| voices | 10 | 9 |" in text.replace(".0", "")


def test_new_voices_report_compares_every_config_with_default(tmp_path):
    """Several configurations: one paired table each against ``default``; a config with no finished run none."""
    from dld_brain import new_voices as nv

    refs = {"a1": "ONE", "a2": "TWO THREE"}
    manifest = tmp_path / "tts.csv"
    pd.DataFrame({"ID": list(refs), "spk_id": ["flite:kal"] * 2, "wrd": list(refs.values()), "wav": "x",
                  "duration": 1.0}).to_csv(manifest, index=False)
    hyps = {"default": {"a1": "ONE ONE", "a2": "TWO"}, "digits": {"a1": "ONE", "a2": "TWO THREE"},
            "voices": {"a1": "NINE", "a2": "TWO"}}
    for fold in range(2):
        for config, hyp in hyps.items():
            _fake_run(nv.run_folder(tmp_path, config, fold), "tts", hyp, refs)
    runs = nv.collect_voice_runs(tmp_path, ["default", "digits", "voices", "voices30"], [0, 1])
    text = nv.voices_markdown(runs, pd.DataFrame(), a=["digits", "voices", "voices30"], pairs=[("voices", "digits")])
    assert "Paired difference digits - default" in text and "Paired difference voices - default" in text
    assert "voices30 - default" not in text and "Paired difference voices - digits" in text
    diffs = nv.config_differences(runs, "digits", "default").set_index("metric")
    assert diffs.loc["WER", "run_diff"] == pytest.approx(-100 * 2 / 3)  # 2 errors in 3 words, every fold


def test_new_voices_runner_gives_each_override_once():
    """The runner's train.py command: the config's epochs replace the budget's, the user's replace both,
    and no key appears twice (HyperPyYAML would take a duplicated override as an error or silently)."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(REPO / "recipes" / "FSDD"))
    try:
        import run_new_voices as runner
    finally:
        sys.path.pop(0)
    args = argparse.Namespace(output="out", data_folder="data", extra=[])
    keys = lambda argv: [a.split("=", 1)[0] for a in argv[1:]]  # noqa: E731
    long = runner.run_args(args, "voices30", 0, Path("probe.csv"))
    assert "--number_of_epochs=30" in long and len(set(keys(long))) == len(keys(long))
    assert long[0].endswith("voices.yaml")
    digits = runner.run_args(args, "digits", 1, Path("probe.csv"))
    assert digits[0].endswith("teacher.yaml") and "--train_digits=[1, 7]" in digits
    assert "--number_of_epochs=10" in digits
    import speechbrain as sb

    from dld_brain.hparams import load_hparams

    for config, digits in (("default", None), ("default30", None), ("digits30", [1, 7])):
        argv = runner.run_args(args, config, 0, Path("probe.csv"))  # default*: 3-7 digits, base.yaml's old data
        assert load_hparams(*sb.parse_arguments(argv)[::2])["train_digits"] == digits, config
    args.extra = ["--number_of_epochs=2"]
    short = runner.run_args(args, "voices30", 0, Path("probe.csv"))
    assert "--number_of_epochs=2" in short and "--number_of_epochs=30" not in short


def test_new_voices_mild_yaml_is_the_milder_channel_augmentation(tmp_path):
    """voices_mild.yaml loads on top of voices.yaml: fewer, gentler channel effects, no clipping, same data."""
    from speechbrain.augment.time_domain import DoClip

    from dld_brain.hparams import load_hparams

    paths = {"experiment_root": str(tmp_path), "data_folder": str(tmp_path)}
    strong, mild = load_hparams(HP / "voices.yaml", paths), load_hparams(HP / "voices_mild.yaml", paths)
    assert mild["train_digits"] == strong["train_digits"] == [1, 7]
    a, b = strong["channel_augment"], mild["channel_augment"]
    assert b.augment_prob < a.augment_prob and b.max_augmentations < a.max_augmentations
    assert any(isinstance(x, DoClip) for x in a.augmentations.values())
    assert not any(isinstance(x, DoClip) for x in b.augmentations.values())
    assert mild["channel_noise"].snr_low > strong["channel_noise"].snr_low
    assert mild["wav_augment"][1] is b  # the wave pipeline uses the redefined augmenter


def test_new_voices_include_joins_a_committed_report(tmp_path):
    """A study run in pieces: folds trained here join the folds of a committed report (CSV only, no
    checkpoints); a run in both is taken from here, other configs / folds of the report are left out."""
    from dld_brain import new_voices as nv

    refs = {"a1": "ONE", "a2": "TWO THREE"}
    manifest = tmp_path / "tts.csv"
    pd.DataFrame({"ID": list(refs), "spk_id": ["flite:kal"] * 2, "wrd": list(refs.values()), "wav": "x",
                  "duration": 1.0}).to_csv(manifest, index=False)
    here = tmp_path / "here"
    for fold in (1, 2):  # fresh: fold 1 also in the report, fold 2 only here
        _fake_run(nv.run_folder(here, "a", fold), "tts", {"a1": "ONE", "a2": "TWO THREE"}, refs)
    old = tmp_path / "old"
    old.mkdir()
    pd.DataFrame([{"method": m, "test_set": "tts", "fold": f, "seed": 1, "depth": 6, "WER": w, "WER_beam": w,
                   "encoder_params": 100} for m, f, w in [("a", 0, 30.0), ("a", 1, 99.0), ("b", 0, 50.0),
                                                          ("a", 5, 10.0)]]).to_csv(old / "new_voices.csv",
                                                                                   index=False)
    pd.DataFrame([{"group": "all", "utterances": 2, "words": 3, "WER": 99.0, "WER_beam": 99.0, "config": "a",
                   "fold": f} for f in (0, 1)]).to_csv(old / "tts_by_voice.csv", index=False)
    (old / "timing.csv").write_text("a,0,0,100.0,90.0\na,1,0,500.0,400.0\na,0,1,7.0,7.0\n")
    runs = nv.collect_voice_runs(here, ["a"], [0, 1, 2])
    groups = nv.collect_probe_groups(here, ["a"], [0, 1, 2], manifest)
    timing = pd.DataFrame({"config": ["a", "a"], "fold": [1, 2], "exit": [0, 0], "wall_s": [10.0, 20.0],
                           "cpu_s": [9.0, 19.0]})
    runs, groups, timing = nv.merge_committed(old, runs, groups, timing, ["a"], [0, 1, 2])
    assert sorted(runs["fold"]) == [0, 1, 2] and set(runs["method"]) == {"a"}
    assert runs.set_index("fold").loc[1, "WER"] == 0.0 and runs.set_index("fold").loc[0, "WER"] == 30.0
    all_rows = groups[groups["group"] == "all"].set_index("fold")
    assert sorted(all_rows.index) == [0, 1, 2] and all_rows.loc[1, "WER"] == 0.0
    assert sorted(zip(timing["fold"], timing["wall_s"])) == [(0, 100.0), (1, 10.0), (2, 20.0)]
    with pytest.raises(FileNotFoundError, match="no report to include"):
        nv.merge_committed(tmp_path / "missing", runs, groups, timing, ["a"], [0])


def test_new_voices_seeds_train_apart_and_aggregate_with_a_committed_seed(tmp_path):
    """Seeds 2-3 added to a committed seed-1 report: each seed trains in its own folder (seed 1 keeps the old
    layout, so old runs still resume), runs pair by (fold, seed), and the committed seed-1 runs of a fold are kept
    beside this machine's seed-2 runs of the same fold (per-voice rows and timing included)."""
    import argparse
    import sys
    from pathlib import Path

    from dld_brain import new_voices as nv

    sys.path.insert(0, str(REPO / "recipes" / "FSDD"))
    try:
        import run_new_voices as runner
    finally:
        sys.path.pop(0)
    args = argparse.Namespace(output=str(tmp_path / "out"), data_folder="data", extra=[])
    roots = {seed: next(a for a in runner.run_args(args, "digits30", 0, Path("p.csv"), seed)
                        if a.startswith("--experiment_root=")) for seed in (1, 2, 3)}
    assert len(set(roots.values())) == 3 and roots[1] == f"--experiment_root={tmp_path / 'out' / 'digits30' / 'fold0'}"
    assert "--seed=2" in runner.run_args(args, "digits30", 0, Path("p.csv"), 2)

    refs = {"a1": "ONE", "a2": "TWO THREE"}
    manifest = tmp_path / "tts.csv"
    pd.DataFrame({"ID": list(refs), "spk_id": ["flite:kal"] * 2, "wrd": list(refs.values()), "wav": "x",
                  "duration": 1.0}).to_csv(manifest, index=False)
    here = tmp_path / "here"
    for fold in (0, 1):
        _fake_run(nv.run_folder(here, "a", fold, seed=2), "tts", {"a1": "ONE", "a2": "TWO"}, refs)  # 1 of 3
        _fake_run(nv.run_folder(here, "b", fold, seed=2), "tts", {"a1": "NINE", "a2": "TWO"}, refs)  # 2 of 3
    assert nv.collect_voice_runs(here, ["a"], [0, 1]).empty  # seed 1 was not trained here
    runs = nv.collect_voice_runs(here, ["a", "b"], [0, 1], seeds=[2])
    groups = nv.collect_probe_groups(here, ["a", "b"], [0, 1], manifest, seeds=[2])
    assert set(runs["seed"]) == {2} and set(groups["seed"]) == {2}
    old = tmp_path / "old"  # a report written before seeds: no seed in tts_by_voice.csv nor timing.csv
    old.mkdir()
    pd.DataFrame([{"method": m, "test_set": "tts", "fold": f, "seed": 1, "depth": 6, "WER": w, "WER_beam": w,
                   "encoder_params": 100} for m, f, w in [("a", 0, 0.0), ("a", 1, 0.0), ("b", 0, 100.0),
                                                          ("b", 1, 100.0)]]).to_csv(old / "new_voices.csv",
                                                                                      index=False)
    pd.DataFrame([{"group": "all", "utterances": 2, "words": 3, "WER": 0.0, "WER_beam": 0.0, "config": c,
                   "fold": f} for c in "ab" for f in (0, 1)]).to_csv(old / "tts_by_voice.csv", index=False)
    (old / "timing.csv").write_text("a,0,0,100.0,90.0\na,1,0,100.0,90.0\nb,0,0,100.0,90.0\nb,1,0,100.0,90.0\n")
    (here / "timing.csv").write_text("a,0,0,300.0,290.0,2\na,1,0,300.0,290.0,2\n")
    runs, groups, timing = nv.merge_committed(old, runs, groups, nv.read_timing(here / "timing.csv"), ["a", "b"],
                                              [0, 1])
    assert sorted(zip(runs["method"], runs["fold"], runs["seed"])) == [
        (m, f, s) for m in "ab" for f in (0, 1) for s in (1, 2)]
    assert len(groups[groups["group"] == "all"]) == 8 and sorted(set(groups["seed"])) == [1, 2]
    assert sorted(zip(timing["config"], timing["seed"], timing["wall_s"])) == [
        ("a", 1, 100.0), ("a", 1, 100.0), ("a", 2, 300.0), ("a", 2, 300.0), ("b", 1, 100.0), ("b", 1, 100.0)]
    diffs = nv.config_differences(runs, "a", "b").set_index("metric")
    assert diffs.loc["WER", "runs"] == 4  # paired by (fold, seed)
    assert diffs.loc["WER", "run_diff"] == pytest.approx((-100 - 100 / 3) / 2)  # seed 1: 0 - 100, seed 2: 1 - 2 of 3
    text = nv.voices_markdown(runs, groups, a="a", b="b", timing=timing)
    assert "2 leave-one-speaker-out folds x 2 seeds" in text and "| a | 200 | 190 |" in text.replace(".0", "")
    assert "t over runs" in text and "mean [95 % CI] over runs)" in text
