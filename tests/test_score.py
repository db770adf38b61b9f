"""python -m dld_brain.score: WER/CER with jiwer agree with SpeechBrain's ErrorRateStats; SpeechBrain-style
per-utterance output; bad input is one line, no traceback."""

import random
import subprocess
import sys

import pytest
from speechbrain.utils.metric_stats import ErrorRateStats

from dld_brain.score import main, score_texts, summary

REFS = {"u1": "one two three four", "u2": "five six", "u3": "seven eight nine", "u4": ""}
HYPS = {"u1": "one too three four four", "u2": "six", "u3": "seven eight nine", "u4": "oh"}


def write(path, texts):
    path.write_text("".join(f"{k} {v}\n" for k, v in texts.items()))
    return path


def speechbrain_stats(refs, hyps):
    stats = ErrorRateStats()
    for utt, ref in refs.items():
        stats.append([utt], [hyps.get(utt, "").split()], [ref.split()])
    return stats.summarize()


def test_score_matches_speechbrain_error_rate_stats():
    """Totals equal SpeechBrain's on hand-made and random texts (edit distances are unique)."""
    rng = random.Random(0)
    words = "zero one two three four five six seven eight nine oh".split()
    refs = dict(REFS)
    hyps = dict(HYPS)
    for i in range(30):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 8))]
        hyp = [w for w in ref if rng.random() > 0.2] + [rng.choice(words) for _ in range(rng.randint(0, 2))]
        rng.shuffle(hyp) if rng.random() < 0.3 else None
        refs[f"r{i}"], hyps[f"r{i}"] = " ".join(ref), " ".join(hyp)
    ours = summary(score_texts(refs, hyps))
    sb = speechbrain_stats(refs, hyps)
    assert ours["num_scored_tokens"] == sb["num_scored_tokens"]
    assert ours["insertions"] + ours["deletions"] + ours["substitutions"] == \
        sb["insertions"] + sb["deletions"] + sb["substitutions"]
    assert ours["error_rate"] == pytest.approx(sb["error_rate"])
    assert ours["num_erroneous_sents"] == sb["num_erroneous_sents"]


def test_score_cli_per_utterance_output(tmp_path, capsys):
    ref, hyp = write(tmp_path / "ref.txt", REFS), write(tmp_path / "hyp.txt", {k: v for k, v in HYPS.items()
                                                                              if k != "u3"})
    assert main(["--ref", str(ref), "--hyp", str(hyp)]) == 0
    out = capsys.readouterr().out
    # u1: 1 sub + 1 ins, u2: 1 del, u3: missing = 3 del, u4: 1 ins -> 7 errors / 9 words
    assert out.splitlines()[0] == "%WER 77.78 [ 7 / 9, 2 ins, 4 del, 1 sub ]"
    assert "Scored 4 sentences, 1 not present in hyp." in out
    assert "u1, %WER 50.00 [ 2 / 4, 1 ins, 0 del, 1 sub ]" in out
    lines = out.splitlines()
    at = lines.index("u2, %WER 50.00 [ 1 / 2, 0 ins, 1 del, 0 sub ]")
    assert [line.split(";") for line in lines[at + 1:at + 4]] == [[" five ", " six"], ["  D   ", "  = "], ["<eps> ", " six"]]
    assert main(["--ref", str(ref), "--hyp", str(hyp), "--cer", "--out", str(tmp_path / "d" / "cer.txt")]) == 0
    first = capsys.readouterr().out.strip()
    assert first.startswith("%CER ") and (tmp_path / "d" / "cer.txt").read_text().startswith(first)


def test_score_cli_errors_are_one_line(tmp_path):
    ref = write(tmp_path / "ref.txt", REFS)
    for args in (["--ref", str(tmp_path / "missing.txt"), "--hyp", str(ref)],
                 ["--ref", str(ref), "--hyp", str(write(tmp_path / "other.txt", {"x1": "a", "x2": "b"}))]):
        proc = subprocess.run([sys.executable, "-m", "dld_brain.score", *args], capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
