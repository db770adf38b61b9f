"""SpeechBrain conventions: --test_only = skip_training, --data_parallel_backend rejected in one line,
rank-aware logging, and the export / report command lines failing in one line without a traceback."""

import importlib
import logging
import subprocess
import sys

import pytest
import speechbrain.utils.logger as sb_logger

from conftest import REPO, TINY_FSDD
from dld_brain import brain, recipe, selector_brain, slu_recipe, teacher
from dld_brain.recipe import main_guard, setup_experiment

FSDD_TEACHER = str(REPO / "hparams" / "fsdd" / "teacher.yaml")


def args(tmp_path, *extra):
    return [FSDD_TEACHER, f"--experiment_root={tmp_path}", f"--data_folder={tmp_path}", *TINY_FSDD, *extra]


def test_test_only_means_skip_training(tmp_path):
    hparams, run_opts, _ = setup_experiment(args(tmp_path, "--test_only"))
    assert run_opts["test_only"] and hparams["skip_training"] is True
    hparams, _, _ = setup_experiment(args(tmp_path / "b"))
    assert hparams["skip_training"] is False


def test_data_parallel_backend_is_rejected_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_guard(lambda: setup_experiment(args(tmp_path, "--data_parallel_backend")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --data_parallel_backend") and "torchrun" in err
    assert not (tmp_path / "teacher").exists()  # rejected before anything is created


def test_rank_aware_logging(monkeypatch, caplog):
    """The recipe modules log through SpeechBrain's multi-process adapter: nothing on ranks > 0, except
    what is per rank (a skipped non-finite step)."""
    for module in (brain, recipe, teacher, selector_brain, slu_recipe):
        assert isinstance(module.logger, sb_logger.MultiProcessLoggerAdapter), module.__name__
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(sb_logger, "if_main_process", lambda: False)
    recipe.logger.info("only on the main process")
    recipe.logger.warning("per rank", main_process_only=False)
    assert [r.getMessage() for r in caplog.records] == ["per rank"]
    monkeypatch.setattr(sb_logger, "if_main_process", lambda: True)
    recipe.logger.info("main")
    assert caplog.records[-1].getMessage() == "main"


def one_line_error(module, *cli_args, capsys=None):
    """stderr of ``python -m module cli_args`` (in this process with ``capsys``): exit 2, one line."""
    if capsys is None:
        proc = subprocess.run([sys.executable, "-m", module, *map(str, cli_args)], capture_output=True,
                              text=True, cwd=REPO)
        code, err = proc.returncode, proc.stderr
    else:
        with pytest.raises(SystemExit) as exit_info:
            importlib.import_module(module).main([str(a) for a in cli_args])
        code, err = exit_info.value.code, capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


def test_export_and_report_errors_are_one_line(tmp_path, capsys):
    assert "not an inference bundle" in one_line_error("dld_brain.export", "--model", tmp_path / "nowhere")
    bad = tmp_path / "bundle"
    bad.mkdir()
    (bad / "inference.yaml").write_text("model: !new:nonexistent_module.Thing\n  x: 1\n")
    assert "nonexistent_module" in one_line_error("dld_brain.export", "--model", bad, capsys=capsys)
    (bad / "inference.yaml").write_text("model: [\n")
    assert "inference.yaml" in one_line_error("dld_brain.export", "--model", bad, capsys=capsys)
    assert "depth sweep not found" in one_line_error("dld_brain.report", tmp_path / "out", tmp_path / "none.csv",
                                                     capsys=capsys)
    csv = tmp_path / "other.csv"
    csv.write_text("a,b\n1,2\n")
    assert "not a depth-sweep CSV" in one_line_error("dld_brain.report", tmp_path / "out", csv, capsys=capsys)
    sweep = tmp_path / "sweep.csv"
    sweep.write_text("method,test_set,depth,encoder_params,WER\nteacher,test,1,100,50.0\n")
    assert "metric 'CER'" in one_line_error("dld_brain.report", tmp_path / "out", sweep, "--metric", "CER",
                                            capsys=capsys)
