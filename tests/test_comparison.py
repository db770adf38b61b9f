"""Running several methods as separate train.py processes: parallel jobs, dependencies, reuse, failure."""

import json
from pathlib import Path

import pytest

from dld_brain.comparison import run_methods

#: a stand-in train.py: records when it ran, sleeps, writes a depth sweep; fails when its yaml says so
FAKE_TRAIN = '''
import json, sys, time
from pathlib import Path
method = Path(sys.argv[1]).stem
root = Path(sys.argv[2].split("=", 1)[1])
start = time.time()
time.sleep(float(Path(sys.argv[1]).read_text() or 0.5))
if method == "broken":
    sys.exit(3)
(root / method).mkdir(parents=True, exist_ok=True)
(root / method / "depth_sweep_test.csv").write_text("depth\\n1\\n")
(root / method / "span.json").write_text(json.dumps([start, time.time()]))
'''


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(FAKE_TRAIN)
    hp = tmp_path / "hparams"
    hp.mkdir()
    for method, seconds in {"teacher": 1.5, "rd": 0.2, "dld": 0.2, "broken": 0.1}.items():
        (hp / f"{method}.yaml").write_text(str(seconds))
    return script, hp, tmp_path / "exp"


def span(root: Path, method: str) -> list:
    return json.loads((root / method / "span.json").read_text())


def test_parallel_jobs_respect_dependencies(fake):
    script, hp, root = fake
    seconds = run_methods(script, hp, ["teacher", "rd", "dld"], str(root), jobs=2, after={"dld": ["teacher"]})
    assert set(seconds) == {"teacher", "rd", "dld"}
    teacher, rd, dld = span(root, "teacher"), span(root, "rd"), span(root, "dld")
    assert rd[0] < teacher[1]  # RD ran beside the teacher...
    assert dld[0] >= teacher[1]  # ...DLD only after the teacher finished, though RD finished first
    assert (root / "rd.log").is_file()  # parallel runs log to files


def test_finished_runs_are_reused_and_failures_name_the_method(fake):
    script, hp, root = fake
    run_methods(script, hp, ["rd"], str(root))
    again = run_methods(script, hp, ["rd", "dld"], str(root), skip_done=["rd"])
    assert again["rd"] == 0.0 and again["dld"] > 0
    with pytest.raises(SystemExit, match="broken failed"):
        run_methods(script, hp, ["broken"], str(root))


def test_comparison_table_adds_isolated_digits_when_every_method_has_them(tmp_path):
    """The FSDD main job scores isolated digits too (base.yaml isolated_test): the comparison table shows that
    set beside ``test`` when every method has its sweep, and leaves it out otherwise."""
    import pandas as pd

    from dld_brain.comparison import compare

    for method, wer in (("teacher", 10.0), ("dld", 20.0)):
        for test_set, shift in (("test", 0.0), ("test_isolated", 5.0)):
            (tmp_path / method).mkdir(exist_ok=True)
            pd.DataFrame({"method": method, "test_set": test_set, "depth": [3, 6], "WER": [wer + shift + 1, wer + shift],
                          "WER_beam": [wer, wer], "encoder_params": [50, 100]}).to_csv(
                tmp_path / method / f"depth_sweep_{test_set}.csv", index=False)
    table = pd.read_csv(compare(tmp_path, ["teacher", "dld"], extra_sets=["test_isolated"]).with_suffix(".csv"))
    isolated = table[table["test_set"] == "test_isolated"].set_index("depth")
    assert list(isolated.index) == [3, 6] and isolated.loc[6, "dld"] == 25.0 and isolated.loc[3, "teacher"] == 16.0
    assert (tmp_path / "comparison_test_isolated.png").is_file()
    (tmp_path / "dld" / "depth_sweep_test_isolated.csv").unlink()
    table = pd.read_csv(compare(tmp_path, ["teacher", "dld"], extra_sets=["test_isolated"]).with_suffix(".csv"))
    assert set(table["test_set"]) == {"test"}
