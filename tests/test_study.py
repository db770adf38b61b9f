"""The FSDD study: speaker folds, statistics on synthetic numbers with known behaviour (t-interval,
paired bootstrap, run-level test), training cost answers, the job scheduler, and the shrunk study command
(real audio, tiny model) end to end: run, resume, export, re-aggregate."""

import csv
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny

from dld_brain import study
from dld_brain.comparison import Job, run_jobs
from dld_brain.data.fsdd import SPEAKERS, prepare_fsdd, speaker_fold
from dld_brain.data.manifest import DataPrepError


# -------------------------------------------------------------------------------------------------- folds
@pytest.mark.parametrize("num_folds", [2, 3, 4, 5, 6])
def test_speaker_folds_rotate_and_keep_valid_apart(num_folds):
    tested = []
    for fold in range(num_folds):
        train, valid, test = speaker_fold(fold, num_folds)
        assert len(valid) == 1 and train and test
        assert not set(train) & set(valid) and not set(train) & set(test) and not set(valid) & set(test)
        assert set(train) | set(valid) | set(test) == set(SPEAKERS)
        tested += list(test)
    assert sorted(tested) == sorted(SPEAKERS)  # every speaker tested exactly once across the folds
    sizes = {len(speaker_fold(f, num_folds)[2]) for f in range(num_folds)}
    assert max(sizes) - min(sizes) <= 1


def test_speaker_fold_shapes_and_errors():
    assert [len(part) for part in speaker_fold(0, 3)] == [3, 1, 2]
    assert [len(part) for part in speaker_fold(0, 6)] == [4, 1, 1]
    with pytest.raises(DataPrepError, match="fold must be 0..2"):
        speaker_fold(3, 3)
    with pytest.raises(DataPrepError, match="num_folds must be 2..6"):
        speaker_fold(0, 7)


def test_fold_prep_validates_on_other_speakers(tmp_path, fsdd_dir):
    train, valid, test = speaker_fold(1, 3)
    csvs = prepare_fsdd(fsdd_dir, tmp_path, download=False, takes_per_digit=4, train_copies=1,
                        train_speakers=train, valid_speakers=valid, heldout_speakers=test)
    speakers = {split: {row["spk_id"] for row in csv.DictReader(open(path))} for split, path in csvs.items()}
    assert speakers == {"train": set(train), "valid": set(valid), "test": set(test)}
    digits = {split: sum(len(row["wrd"].split()) for row in csv.DictReader(open(path)))
              for split, path in csvs.items()}
    # the test speakers are not validated on, so all their (first 4) takes are tested; valid keeps takes 0-1
    assert digits == {"train": 10 * 4 * len(train), "valid": 10 * 2 * len(valid), "test": 10 * 4 * len(test)}
    with pytest.raises(DataPrepError, match="both in heldout_speakers and valid_speakers"):
        prepare_fsdd(fsdd_dir, tmp_path / "bad", download=False, train_speakers=train,
                     valid_speakers=test[:1], heldout_speakers=test)


# --------------------------------------------------------------------------------------------- statistics
def test_t_interval_known_values_and_coverage():
    mean, low, high = study.t_interval([1, 2, 3, 4, 5])
    # t(0.975, 4) = 2.7764; sd = sqrt(2.5)
    assert mean == 3 and high - mean == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    assert math.isnan(study.t_interval([4.0])[1])
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        _, low, high = study.t_interval(rng.normal(10.0, 3.0, size=9))
        hits += low <= 10.0 <= high
    assert 0.93 <= hits / 2000 <= 0.97  # a 95 % interval covers the true mean 95 % of the time


def synthetic_utts(err_a, err_b, words=5, folds=(0, 1, 2), seeds=(1, 2)):
    """Per-utterance errors of methods a and b: ``err_x(fold, seed, i)`` gives the errors of utterance i."""
    rows = []
    for fold in folds:
        for seed in seeds:
            for i in range(40):
                for method, err in (("a", err_a), ("b", err_b)):
                    rows.append({"fold": fold, "seed": seed, "method": method, "depth": 2, "ID": f"u{i}",
                                 "errors": err(fold, seed, i), "words": words})
    return pd.DataFrame(rows)


def test_paired_bootstrap_no_difference():
    utts = synthetic_utts(lambda f, s, i: i % 3, lambda f, s, i: i % 3)
    result = study.paired_bootstrap(utts, "a", "b", 2, n_boot=2000)
    assert result["diff"] == 0 and result["ci_low"] == 0 and result["ci_high"] == 0 and result["p_value"] == 1
    assert result["runs"] == 6 and result["utterances"] == 120 and result["words"] == 6 * 40 * 5


def test_paired_bootstrap_detects_a_consistent_difference():
    # a makes one error fewer than b on every second utterance: exactly 10 points lower (1 of 5 words, half)
    utts = synthetic_utts(lambda f, s, i: i % 3, lambda f, s, i: i % 3 + (i % 2 == 0))
    result = study.paired_bootstrap(utts, "a", "b", 2, n_boot=2000)
    assert result["diff"] == pytest.approx(-10.0)
    assert result["ci_low"] < result["diff"] < result["ci_high"] < 0
    assert result["p_value"] < 0.01


def test_paired_bootstrap_keeps_seeds_of_an_utterance_together():
    # seed 1 favours a, seed 2 favours b by the same amount on the SAME utterance: the per-utterance
    # difference is 0, so resampling utterances (with all their seeds) gives exactly 0; resampling
    # (fold, seed, utterance) rows independently would not
    utts = synthetic_utts(lambda f, s, i: 1 if s == 1 else 2, lambda f, s, i: 2 if s == 1 else 1)
    result = study.paired_bootstrap(utts, "a", "b", 2, n_boot=2000)
    assert result["diff"] == 0 and result["ci_low"] == 0 and result["ci_high"] == 0


def test_paired_bootstrap_false_positive_rate_is_near_alpha():
    rng = np.random.default_rng(1)
    rejections = 0
    for _ in range(120):
        noise = rng.integers(0, 3, size=(2, 3, 2, 40))  # method, fold, seed, utterance: same distribution
        utts = synthetic_utts(lambda f, s, i: noise[0, f, s - 1, i], lambda f, s, i: noise[1, f, s - 1, i])
        rejections += study.paired_bootstrap(utts, "a", "b", 2, n_boot=400, seed=2)["p_value"] < 0.05
    assert 1 <= rejections <= 13  # about 5 % of 120 (6) are expected


def test_run_level_differences_and_depth_summary():
    rows = []
    for fold in range(3):
        for seed in (1, 2):
            for method, wer in (("dld", 10 + fold), ("rdld", 12 + fold + 0.5 * seed)):
                rows.append({"fold": fold, "seed": seed, "method": method, "test_set": "test", "depth": 3,
                             "WER": wer, "encoder_params": 1000})
    sweeps = pd.DataFrame(rows)
    result = study.run_level_differences(sweeps, "dld", "rdld", 3)
    diffs = [-2 - 0.5 * s for f in range(3) for s in (1, 2)]
    assert result["runs"] == 6 and result["run_diff"] == pytest.approx(np.mean(diffs))
    assert result["run_ci_high"] < 0 and result["run_p_value"] < 0.001
    summary = study.depth_summary(sweeps)
    assert list(summary["method"]) == ["rdld", "dld"]  # study order: teacher, rdsc, rdld, dld
    dld = summary[summary["method"] == "dld"].iloc[0]
    assert dld["n"] == 6 and dld["mean"] == pytest.approx(11.0)
    assert (dld["ci_low"], dld["ci_high"]) == pytest.approx(study.t_interval([10, 10, 11, 11, 12, 12])[1:])


def test_beam_effect_is_paired_within_runs():
    rows = []
    for fold in range(3):
        for seed in (1, 2):
            greedy = 20 + 3 * fold + seed  # run-to-run spread much larger than the beam's effect
            rows.append({"fold": fold, "seed": seed, "method": "dld", "test_set": "test", "depth": 3,
                         "WER": greedy, "WER_beam": greedy - 2 - 0.1 * seed, "encoder_params": 1000})
    sweeps = pd.DataFrame(rows)
    effect = study.beam_effect(sweeps).iloc[0]
    assert effect["n"] == 6 and effect["mean"] == pytest.approx(-2.15)
    assert effect["ci_high"] < 0 and effect["ci_high"] - effect["ci_low"] < 0.5  # paired: spread cancels
    assert study.beam_effect(sweeps.drop(columns="WER_beam")).empty
    assert study.beam_effect(sweeps.assign(WER_beam=np.nan)).empty


def test_parse_wer_details_matches_speechbrain(tmp_path):
    from speechbrain.utils.metric_stats import ErrorRateStats

    stats = ErrorRateStats()
    refs = [["ONE", "TWO", "THREE"], ["FOUR", "FIVE"], ["SIX"]]
    hyps = [["ONE", "TOO", "THREE", "NINE"], ["FOUR"], ["SIX"]]
    stats.append(["u1", "u2", "u3"], hyps, refs)
    path = tmp_path / "wer_test_n2.txt"
    with open(path, "w") as handle:
        stats.write_stats(handle)
    table = study.parse_wer_details(path).set_index("ID")
    assert table.loc["u1", ["errors", "words", "ins", "subs"]].tolist() == [2, 3, 1, 1]
    assert table.loc["u2", ["errors", "dels"]].tolist() == [1, 1] and table.loc["u3", "errors"] == 0
    assert 100 * table["errors"].sum() / table["words"].sum() == pytest.approx(stats.summarize("error_rate"))
    utts = study.utterance_errors(tmp_path)
    assert set(utts["depth"]) == {2} and len(utts) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(study.StudyError, match="no utt_errors_test.csv and no wer_test_n<k>.txt in"):
        study.utterance_errors(tmp_path / "empty")


# -------------------------------------------------------------------------------------------- training cost
def write_log(folder: Path, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "epoch_log.csv", index=False)


def test_cost_answers_on_synthetic_logs(tmp_path):
    root = tmp_path
    base = study.Run(0, 1, "teacher")
    # teacher: 4 epochs of 10 steps, 20 s train + 5 s valid each -> 100 s, 40 steps
    write_log(base.folder(root), [{"epoch": e, "steps": 10, "train_s": 20.0, "valid_s": 5.0, "WER": 30 - e}
                                  for e in range(1, 5)])
    # RDsc: 10 epochs of 10 steps, 15 s each; mean WER best at epoch 8 (then overfits)
    rdsc = [{"epoch": e, "steps": 10, "train_s": 10.0, "valid_s": 5.0, "WER_n1": 60 - 3 * e, "WER_n2": 40 - 2 * e,
             "WER": 50 - 2.5 * e} for e in range(1, 11)]
    for row in rdsc[8:]:
        row.update(WER_n1=row["WER_n1"] + 10, WER_n2=row["WER_n2"] + 10, WER=row["WER"] + 10)
    write_log(study.Run(0, 1, "rdsc").folder(root), rdsc)
    # DLD: 3 epochs of 10 steps, 10 s each; reaches RDsc's final depth-2 WER (24) at epoch 2, depth 1 never
    write_log(study.Run(0, 1, "dld").folder(root),
              [{"epoch": e, "steps": 10, "train_s": 8.0, "valid_s": 2.0, "WER_n1": 50, "WER_n2": 26 - e,
                "WER": 38} for e in range(1, 4)])
    # a resumed run repeated epoch 2: the last row counts
    with open(study.Run(0, 1, "dld").folder(root) / "epoch_log.csv", "a") as handle:
        handle.write("2,10,8.0,2.0,50,23,38\n")
    # no CPU columns in these logs: CPU costs are NaN and the answers fall back to wall time
    logs = pd.concat([study._tagged(study.load_epoch_log(r.folder(root)), r)
                      for r in (base, study.Run(0, 1, "rdsc"), study.Run(0, 1, "dld"))], ignore_index=True)
    curves = study.cost_curves(logs, num_layers=2)
    teacher = curves[curves["method"] == "teacher"]
    assert teacher["WER_full"].tolist() == [29, 28, 27, 26] and teacher["WER_half"].isna().all()
    dld = curves[curves["method"] == "dld"]
    assert dld["total_s"].tolist() == [110.0, 120.0, 130.0] and dld["total_steps"].tolist() == [50, 60, 70]
    answers = study.cost_answers(curves).iloc[0]
    assert answers["target_full"] == 24 and answers["target_half"] == 36  # RDsc at its best epoch (8)
    assert answers["reach_s_full"] == 120.0 and answers["reach_steps_full"] == 60  # DLD epoch 2, teacher incl.
    assert math.isnan(answers["reach_s_half"])
    assert answers["ref_reach_s_full"] == 120.0  # RDsc itself reached 24 at epoch 8 (8 x 15 s)
    assert answers["cost_ratio_s"] == pytest.approx(130 / 150) and answers["cost_ratio_steps"] == pytest.approx(0.7)
    assert math.isnan(answers["cost_ratio_cpu_s"])
    summary = study.cost_summary(study.cost_answers(curves)).iloc[0]
    assert summary["sooner_unit"] == "s"
    assert summary["saving_s_pct"] == pytest.approx(100 * (1 - 130 / 150))
    assert summary["reached_full"] == 1 and summary["sooner_full"] == 0 and summary["reached_half"] == 0
    # without the teacher's 100 s: DLD alone costs 30 s of RDsc's 150 s and reached 24 after 20 s (RDsc: 120 s)
    assert answers["own_ratio_s"] == pytest.approx(30 / 150) and answers["own_reach_s_full"] == 20.0
    assert summary["own_ratio_s"] == pytest.approx(0.2) and summary["own_sooner_full"] == 1


# ------------------------------------------------------------------------------------------------- jobs
def test_run_jobs_does_not_let_a_blocked_job_hold_back_later_ones(tmp_path):
    def job(name, seconds, after=()):
        code = (f"import time, pathlib; t = time.time(); time.sleep({seconds}); "
                f"pathlib.Path(r'{tmp_path}/{name}').write_text(f'{{t}} {{time.time()}}')")
        return Job(name, [sys.executable, "-c", code], after=after)

    done = []
    run_jobs([job("teacher", 1.5), job("dld", 0.1, ["teacher"]), job("rd", 0.1), job("rd2", 0.1)], jobs=2,
             on_done=lambda j, s: done.append(j.name))
    span = {n: [float(v) for v in (tmp_path / n).read_text().split()] for n in ("teacher", "dld", "rd2")}
    assert span["rd2"][0] < span["teacher"][1] <= span["dld"][0]  # rd2 did not wait behind the blocked dld
    assert done[-1] == "dld" and sorted(done) == ["dld", "rd", "rd2", "teacher"]


def test_run_jobs_failure_names_the_job_and_skips_its_dependents(tmp_path):
    marker = tmp_path / "dld_ran"
    jobs = [Job("teacher", [sys.executable, "-c", "raise SystemExit(3)"], log=tmp_path / "teacher.log"),
            Job("dld", [sys.executable, "-c", f"open(r'{marker}', 'w')"], after=["teacher"])]
    with pytest.raises(SystemExit, match="teacher, dld failed or could not run"):
        run_jobs(jobs, jobs=2, fail_fast=False)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ the command, shrunk
RUN_STUDY = REPO / "recipes" / "FSDD" / "run_study.py"
#: the shrunk study: 1 fold of 3, 2 seeds, all four methods, the tiny model for 1 epoch
SHRUNK = ["--folds", "3", "--only-folds", "0", "--seeds", "2", "--jobs", "2", "--bootstrap", "200", "--fork"]


@pytest.fixture
def run_study(capsys, monkeypatch):
    """recipes/FSDD/run_study.py's main in this process (its runs are still train.py subprocesses);
    returns what it printed."""
    import importlib.util

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = importlib.util.spec_from_file_location("fsdd_run_study", RUN_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(*args):
        capsys.readouterr()
        module.main(list(args))
        return capsys.readouterr().out
    return run


def test_study_command_shrunk_resume_export_aggregate(tmp_path, fsdd_dir, run_study):
    out, docs = tmp_path / "results", tmp_path / "docs"
    overrides = ["--", *tiny(), "--sweep_depths=[2,4]"]
    start = time.time()
    text = run_study(*SHRUNK, "--output", str(out), "--export", str(docs), "--data_folder", str(fsdd_dir),
                     *overrides)
    first = time.time() - start
    assert "0 of 8 runs already finished; 8 to run" in text
    for method in study.METHODS:
        for seed in (1, 2):
            run = study.Run(0, seed, method)
            assert study.is_finished(run.folder(out))
            log = pd.read_csv(run.folder(out) / "epoch_log.csv")  # the Brain's cost log
            assert log["epoch"].tolist() == [1] and (log["steps"] > 0).all() and (log["train_cpu_s"] > 0).all()
            assert ("WER_n4" in log) == (method != "teacher") and (log["valid_s"] > 0).all()
            exported = sorted(p.name for p in run.folder(docs).iterdir())
            assert "utt_errors_test.csv" in exported and "run.json" in exported
            assert not any(p.endswith(".ckpt") for p in exported) and not (run.folder(docs) / "save").exists()
    report = (docs / "study.md").read_text()
    assert "Missing runs (16)" in report  # 3 folds x 2 seeds x 4 methods expected, 8 finished
    assert "| depth | enc. params (M) | teacher | rdsc | rdld | dld |" in report
    assert "DLD vs RDLD:" in report and "DLD vs RDsc:" in report and "reached RDsc's final valid WER" in report
    summary = pd.read_csv(docs / "summary.csv")
    assert set(summary["method"]) == set(study.METHODS) and (summary["n"] == 2).all()
    assert sorted(set(summary["depth"])) == [2, 4]
    sig = pd.read_csv(docs / "significance.csv")
    assert set(zip(sig["a"], sig["b"])) == set(study.PAIRS) and (sig["runs"] == 2).all()
    assert (docs / "study_wer_vs_params.png").stat().st_size > 1000 and (docs / "study_cost.png").is_file()
    if "WER_beam" in pd.read_csv(study.Run(0, 1, "dld").folder(out) / "depth_sweep_test.csv"):
        beam = pd.read_csv(docs / "summary_beam.csv")
        assert set(beam["method"]) == set(study.METHODS) and (beam["n"] == 2).all()
        assert "beam search" in report and len(pd.read_csv(docs / "beam_effect.csv")) == len(beam)

    # a rerun trains nothing; re-aggregation from the exported CSVs alone gives the same tables
    text = run_study(*SHRUNK, "--output", str(out), "--export", str(docs), "--data_folder", str(fsdd_dir),
                     *overrides)
    assert "8 of 8 runs already finished; 0 to run" in text
    shutil.rmtree(out)
    before = summary.copy(), sig.copy()
    run_study("--folds", "3", "--seeds", "2", "--aggregate-only", "--export", str(docs), "--bootstrap", "200")
    pd.testing.assert_frame_equal(pd.read_csv(docs / "summary.csv"), before[0])
    pd.testing.assert_frame_equal(pd.read_csv(docs / "significance.csv"), before[1])
    print(f"shrunk study: {first:.0f} s")


def test_study_variants_run_as_their_base_method(tmp_path):
    """Issue 15 item 4: a variant is its base method's run with its own setting, its own folder and teacher."""
    import importlib.util

    import speechbrain as sb

    from dld_brain.hparams import load_hparams

    spec = importlib.util.spec_from_file_location("fsdd_run_study_variants", RUN_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(["--variants", "--output", str(tmp_path)])
    assert set(args.methods) == set(study.METHODS) | set(study.VARIANTS)
    runs = study.study_runs([0], [1], args.methods)
    assert [r.method for r in runs[:2]] == ["teacher", "rdsc"]  # teacher-free runs first
    run = study.Run(0, 1, "dld_t2")
    argv = module.run_overrides(args, run)
    assert "--kd_temperature=2.0" in argv and "--method=dld_t2" in argv
    assert "--number_of_epochs=6" in argv  # the DLD budget
    hparams_file, _, overrides = sb.parse_arguments([str(module.HPARAMS / "dld.yaml"), *argv])
    hparams = load_hparams(hparams_file, overrides)
    assert hparams["kd_temperature"] == 2.0 and hparams["kd_weight"] == 1.0 and hparams["drop_prob"] == 0.5
    assert Path(hparams["output_folder"]) == run.folder(tmp_path)
    assert Path(hparams["teacher_checkpoint"]) == run.teacher.folder(tmp_path)
    assert study.study_pairs(["dld", "rdld", "rdsc", "dld_p07", "rdld_p07", "dld_t2"]) == [
        ("dld", "rdld"), ("dld", "rdsc"), ("rdld", "rdsc"), ("dld_t2", "rdld"), ("dld_t2", "dld"),
        ("dld_p07", "rdld_p07")]
    assert study.study_pairs(["dld_p03", "rdld"]) == []  # its RDLD at p=0.3 is missing


def test_study_keeps_its_committed_data_when_the_default_changes():
    """hparams/fsdd/base.yaml scores isolated digits since 2026-12-06 and may change its training strings; the
    study's runs stay on the 3-7 strings and no isolated test of its committed results, and its configuration
    still matches the committed study.json, so a later session can add seed 3 and re-aggregate."""
    import importlib.util
    import json

    import speechbrain as sb

    from dld_brain.hparams import load_hparams

    spec = importlib.util.spec_from_file_location("fsdd_run_study_pins", RUN_STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = load_hparams(*sb.parse_arguments([str(module.HPARAMS / "teacher.yaml")])[::2])
    assert default["isolated_test"] > 0  # the main job scores the test speakers' isolated digits
    args = module.parse_args(["--folds", "3", "--output", "unused"])
    for method, hp in (("teacher", "teacher"), ("rdsc", "rdsc"), ("dld", "dld"), ("dld_kd2", "dld")):
        argv = module.run_overrides(args, study.Run(0, 1, method))
        hparams = load_hparams(*sb.parse_arguments([str(module.HPARAMS / f"{hp}.yaml"), *argv])[::2])
        assert hparams["train_digits"] is None and not hparams["isolated_test"], method
    wavlm = load_hparams(*sb.parse_arguments([str(REPO / "hparams" / "fsdd_wavlm" / "teacher.yaml")])[::2])
    assert wavlm["train_digits"] is None and not wavlm["isolated_test"]  # the README's WavLM table's data
    for folder in ("study", "study_variants"):
        assert json.loads((REPO / "docs" / folder / "study.json").read_text()) == module.config(args)


def test_study_plan_remakes_exported_teachers_for_variants(tmp_path):
    """Runs committed under the export are not retrained, but a variant needs its teacher's checkpoint:
    an exported teacher is re-made in the output, and same_sweep says whether it reproduced the export."""
    output, export = tmp_path / "results", tmp_path / "docs"
    sweep = "method,test_set,depth,WER,WER_beam\nteacher,test,1,50.0,20.0\nteacher,test,2,30.0,10.0\n"
    for method in ("teacher", "dld"):
        folder = study.Run(0, 1, method).folder(export)
        folder.mkdir(parents=True)
        (folder / "depth_sweep_test.csv").write_text(sweep)
    assert study.plan_runs([study.Run(0, 1, "dld"), study.Run(0, 1, "teacher")], output, export) == []
    assert study.plan_runs([study.Run(0, 1, "dld")], output) == [study.Run(0, 1, "teacher"), study.Run(0, 1, "dld")]
    assert study.plan_runs([study.Run(0, 1, "dld_t2"), study.Run(0, 1, "rdsc")], output, export) == [
        study.Run(0, 1, "teacher"), study.Run(0, 1, "dld_t2"), study.Run(0, 1, "rdsc")]
    remade = study.Run(0, 1, "teacher").folder(output)
    remade.mkdir(parents=True)
    (remade / "depth_sweep_test.csv").write_text(sweep)
    assert study.plan_runs([study.Run(0, 1, "dld_t2")], output, export) == [study.Run(0, 1, "dld_t2")]
    assert study.same_sweep(remade, study.Run(0, 1, "teacher").folder(export))
    (remade / "depth_sweep_test.csv").write_text(sweep.replace("30.0", "30.1"))
    assert not study.same_sweep(remade, study.Run(0, 1, "teacher").folder(export))


def test_study_refuses_to_mix_configurations(tmp_path, run_study):
    study.check_config(tmp_path, {"folds": 3, "budget": {"teacher": ["--number_of_epochs=8"]}, "extra": []})
    with pytest.raises(study.StudyError, match="another configuration.*extra"):
        run_study("--output", str(tmp_path), "--only-folds", "0", "--", "--number_of_epochs=1")


def test_study_run_level_table_on_beam_wer():
    """The beam-search comparison is a paired t over runs of WER_beam (no per-utterance beam errors exist)."""
    rows = []
    for fold in range(3):
        for seed in (1, 2):
            for depth in (1, 2):
                base = 10.0 * depth + fold + seed
                rows += [{"fold": fold, "seed": seed, "method": "dld", "depth": depth, "test_set": "test",
                          "WER": base, "WER_beam": base - 3.0 - 0.1 * seed},
                         {"fold": fold, "seed": seed, "method": "rdld", "depth": depth, "test_set": "test",
                          "WER": base, "WER_beam": base}]
    table = study.run_level_table(pd.DataFrame(rows), [("dld", "rdld"), ("dld", "missing")], metric="WER_beam")
    assert list(table["depth"]) == [1, 2] and set(table["runs"]) == {6}
    assert np.allclose(table["run_diff"], -3.15) and (table["run_ci_high"] < 0).all()
    assert (table["run_p_value"] < 1e-6).all()
