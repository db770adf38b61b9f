#!/usr/bin/env python3
"""Dynamic-depth Whisper on FSDD connected digits (or LibriSpeech): static vs RDLD vs DLD, WER and latency
per encoder depth, one command.

Usage: python recipes/Whisper/dynamic.py [hparams/whisper/dynamic.yaml] [--key=value ...]

Steps: load the teacher (hub id, transformers folder, or the pinned CTranslate2 tiny.en wheel converted on
the fly, as recipes/Whisper/compress.py does); prepare the data (FSDD digit strings of one speaker fold, or
LibriSpeech manifests); compute Whisper log-mels once, cropped to ``encoder_seconds``; optionally measure
what cropping does to the full model's WER (``slicing_check``); for each seed and method
(``static`` = the pretrained model with layers dropped at inference, ``rdld`` = fine-tuned with random
encoder layer dropping and CE, ``dld`` = the same + KL(frozen full Whisper || student)), decode the test
set greedily at every encoder depth; time encoder + greedy decoding per depth; write ``results.md`` and
``results.json`` into ``output_folder``.
"""

import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import speechbrain as sb  # noqa: E402
import torch  # noqa: E402

import pandas as pd  # noqa: E402

from compress import load_wavs, locate_teacher  # noqa: E402
from dld_brain.data.text import normalize_transcript  # noqa: E402
from dld_brain.hparams import load_hparams  # noqa: E402
from dld_brain.safe_files import UntrustedFileError  # noqa: E402
from dld_brain.sweep import markdown_table  # noqa: E402
from dld_brain.whisper import WhisperSetupError, load_whisper, make_student, normalize_digits_text  # noqa: E402
from dld_brain.whisper_dynamic import (  # noqa: E402
    METHODS,
    DynamicWhisperBrain,
    evaluate_depths,
    features,
    gated_copy,
    latency_per_depth,
    make_dataset,
    mean_interval,
    paired_seed_differences,
    plot_wer_per_depth,
    target_length,
)


def prepare_splits(hp: dict) -> dict:
    """``{split: DataFrame(ID, wav, wrd)}``: FSDD digit strings of speaker fold ``fold`` (``dataset: fsdd``) or
    LibriSpeech manifests (``dataset: librispeech``), each cut to its ``n_<split>`` first rows (null = all), or
    to a seeded random sample of that size when ``subset_seed`` is set."""
    if hp["dataset"] == "fsdd":
        from dld_brain.data.fsdd import prepare_fsdd, speaker_fold

        train, valid, test = speaker_fold(int(hp["fold"]), int(hp["num_folds"]))
        csvs = prepare_fsdd(hp["data_folder"], hp["prep_folder"], fallback_folders=hp["fallback_data_folders"],
                            download=hp["download"], seed=hp["data_seed"], train_copies=hp["train_copies"],
                            train_speakers=train, valid_speakers=valid, heldout_speakers=test)
    elif hp["dataset"] == "librispeech":
        from dld_brain.data.librispeech import prepare_librispeech

        names = hp["librispeech_splits"]  # {train|valid|test: manifest name}
        made = prepare_librispeech(hp["data_folder"], hp["prep_folder"], **hp["librispeech_prep"])
        missing = [v for v in names.values() if v not in made]
        if missing:
            raise WhisperSetupError(f"librispeech_splits names {missing}, which librispeech_prep does not prepare "
                                    f"(it makes {sorted(made)})")
        csvs = {split: made[name] for split, name in names.items()}
    else:
        raise WhisperSetupError(f"dataset must be fsdd or librispeech, got {hp['dataset']!r}")
    splits = {}
    for split in ("train", "valid", "test"):
        table = pd.read_csv(csvs[split])
        table["wav"] = table["wav"].str.replace("$data_root", str(hp["data_folder"]), regex=False)
        if "duration" in table and hp.get("max_duration") is not None:
            table = table[table["duration"] <= float(hp["max_duration"])]
        n = hp[f"n_{split}"]
        if n is not None and hp["subset_seed"] is not None:  # a seeded sample (covers every speaker)
            table = table.sample(n=min(int(n), len(table)), random_state=int(hp["subset_seed"])).sort_index()
        splits[split] = (table if n is None else table.head(int(n))).reset_index(drop=True)
    return splits


def check_hparams(hp: dict) -> None:
    """One-line errors for settings that cannot work, naming the key."""
    unknown = [m for m in hp["methods"] if m not in METHODS]
    if unknown:
        raise WhisperSetupError(f"methods: unknown {unknown}; choose from {list(METHODS)}")
    if not hp["seeds"]:
        raise WhisperSetupError("seeds: give at least one seed")
    if not 0.0 <= float(hp["drop_prob"]) < 1.0:
        raise WhisperSetupError(f"drop_prob must be in [0, 1), got {hp['drop_prob']}")
    if hp["normalizer"] not in ("digits", "text"):
        raise WhisperSetupError(f"normalizer must be digits or text, got {hp['normalizer']!r}")
    askd = hp.get("askd")
    if askd is not None and (not hasattr(askd, "uses_self_kd") or askd.uses_self_kd):
        raise WhisperSetupError("askd: give a dld_brain.askd.ASKD with a teacher_schedule and self_schedule: null "
                                "(self-distillation is not supported under encoder layer dropping), or null")
    if hp["encoder_seconds"] is not None and not hp["slice_positions"]:
        raise WhisperSetupError("encoder_seconds needs slice_positions: True (stock Whisper only takes 30 s)")
    tokens = hp["bench_tokens"]
    if tokens is not None and tokens != "reference" and not (isinstance(tokens, int) and tokens > 0):
        raise WhisperSetupError(f"bench_tokens must be reference, a positive int or null, got {tokens!r}")


def student_base(base, hp: dict):
    """The model a trained student starts from: ``base``, or a copy keeping ``student_decoder_layers`` only."""
    layers = hp["student_decoder_layers"]
    return base if layers is None else make_student(base, decoder_layers=layers)


def train_method(method: str, base, teacher, hp: dict, datasets: dict, seed: int, out: Path):
    """A gated copy of ``base`` trained with RDLD (``rdld``) or DLD (``dld``) for ``number_of_epochs``."""
    torch.manual_seed(seed)
    student = gated_copy(student_base(base, hp), drop_prob=float(hp["drop_prob"]), gate_seed=seed,
                         depth_policy=hp["depth_policy"], slice_positions=hp["slice_positions"])
    for param in student.parameters():
        param.requires_grad_(True)
    student.model.encoder.embed_positions.requires_grad_(False)
    if hp["freeze_decoder"]:
        for param in student.model.decoder.parameters():
            param.requires_grad_(False)
    run = dict(hp, teacher=teacher if method == "dld" else None,
               kd_weight=float(hp["kd_weight"]) if method == "dld" else 0.0,
               askd=copy.deepcopy(hp.get("askd")) if method == "dld" else None,  # fresh step count per run
               prompt_length=len(hp["decoding"]["prompt"]))
    run["epoch_counter"] = sb.utils.epoch_loop.EpochCounter(int(hp["number_of_epochs"]))
    run["train_logger"] = sb.utils.train_logger.FileTrainLogger(str(out / f"train_log_{method}_seed{seed}.txt"))
    params = [p for p in student.parameters() if p.requires_grad]
    brain = DynamicWhisperBrain(modules={"student": student}, opt_class=lambda p: torch.optim.AdamW(params, lr=hp["lr"]),
                                hparams=run, run_opts={"device": hp["device"]})
    brain.fit(run["epoch_counter"], datasets["train"], datasets["valid"],
              train_loader_kwargs={"batch_size": hp["batch_size"], "shuffle": True},
              valid_loader_kwargs={"batch_size": hp["batch_size"]})
    return student.eval()


def main(argv) -> dict:
    """Run the comparison (see the module docstring); returns the results dict written to results.json."""
    hparams_file = argv[0] if argv and not argv[0].startswith("--") else str(ROOT / "hparams" / "whisper" / "dynamic.yaml")
    overrides = "\n".join(": ".join(a[2:].split("=", 1)) for a in argv if a.startswith("--"))
    hp = load_hparams(hparams_file, overrides)
    check_hparams(hp)
    torch.set_num_threads(int(hp["torch_threads"]))
    out = Path(hp["output_folder"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    timings = {}

    try:
        source = locate_teacher(hp["teacher_source"], Path(hp["cache_folder"]))
    except UntrustedFileError as err:
        raise SystemExit(f"teacher not loaded: {err}") from None
    base, tokenizer, decoding = load_whisper(source, hp["cache_folder"])
    for param in base.parameters():
        param.requires_grad_(False)
    teacher = gated_copy(base, slice_positions=hp["slice_positions"]).to(hp["device"])  # frozen full model
    n_layers = base.config.encoder_layers
    depths = list(hp["depths"] or range(1, n_layers + 1))
    normalize = normalize_digits_text if hp["normalizer"] == "digits" else normalize_transcript
    timings["teacher ready"] = time.time() - start

    t0 = time.time()
    splits = prepare_splits(hp)
    wavs = {name: load_wavs(table) for name, table in splits.items()}
    feats = {name: features(w, hp["encoder_seconds"], base.config.num_mel_bins) for name, w in wavs.items()}
    datasets = {name: make_dataset(feats[name], list(splits[name]["ID"]), list(splits[name]["wrd"]), tokenizer,
                                   decoding, hp["target_style"]) for name in ("train", "valid")}
    timings["data + log-mels"] = time.time() - t0
    test_ids, test_refs = list(splits["test"]["ID"]), list(splits["test"]["wrd"])
    results = {"slicing": {}, "wer": {}, "latency": {}, "timings": timings,
               "n": {k: len(v) for k, v in splits.items()}, "depth_layers": {},
               "decoder_layers": hp["student_decoder_layers"]}

    t0 = time.time()
    for seconds in hp["slicing_check"] or []:
        seconds = None if seconds in (None, 30, 30.0) else float(seconds)
        crop = features(wavs["test"], seconds, base.config.num_mel_bins)
        res = evaluate_depths(teacher, crop, test_ids, test_refs, tokenizer, decoding, [n_layers], normalize,
                              hp["max_new_tokens"])[n_layers]
        results["slicing"][str(seconds or 30.0)] = {"wer": res["wer"], "words": res["words"]}
        (out / f"hyp_slicing_{seconds or 30.0}s.txt").write_text("\n".join(res["lines"]) + "\n")
    timings["slicing check"] = time.time() - t0

    for seed in hp["seeds"]:
        for method in hp["methods"]:
            if method == "static" and seed != hp["seeds"][0]:
                continue  # no training: the same model for every seed
            t0 = time.time()
            hp["decoding"] = decoding
            model = teacher if method == "static" else train_method(method, base, teacher, hp, datasets, seed, out)
            timings[f"{method} seed {seed} training"] = time.time() - t0
            t0 = time.time()
            res = evaluate_depths(model, feats["test"], test_ids, test_refs, tokenizer, decoding, depths, normalize,
                                  hp["max_new_tokens"], policy=hp["depth_policy"])
            timings[f"{method} seed {seed} decoding"] = time.time() - t0
            for depth, r in res.items():
                results["wer"].setdefault(method, {}).setdefault(str(depth), []).append(r["wer"])
                results["depth_layers"][str(depth)] = r["layers"]
                (out / f"hyp_{method}_seed{seed}_depth{depth}.txt").write_text("\n".join(r["lines"]) + "\n")
            (out / "results.json").write_text(json.dumps(results, indent=1))

    t0 = time.time()
    bench = wavs["test"][: int(hp["bench_utterances"])]
    fixed = target_length(tokenizer, test_refs, hp["target_style"]) if hp["bench_tokens"] == "reference" \
        else hp["bench_tokens"]
    results["bench_tokens"] = fixed
    timed = {"latency": teacher}  # the full decoder; weights do not matter at a fixed output length
    if hp["student_decoder_layers"] is not None:
        timed["latency_compressed"] = gated_copy(student_base(base, hp), slice_positions=hp["slice_positions"])
    for key, model in timed.items():
        results.setdefault(key, {})
        for seconds in hp["bench_seconds"]:
            seconds = None if seconds in (None, 30, 30.0) else float(seconds)
            times = latency_per_depth(model, bench, decoding, depths, seconds, hp["max_new_tokens"],
                                      hp["bench_repeats"], fixed_tokens=fixed)
            results[key][str(seconds or 30.0)] = {str(d): t for d, t in times.items()}
    timings["latency benchmark"] = time.time() - t0
    timings["total"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = report(results, hp, depths, n_layers)
    (out / "results.md").write_text(md)
    key = "latency_compressed" if "latency_compressed" in results else "latency"
    latency = results[key].get(str(float(hp["encoder_seconds"] or 30.0)), {})
    stock = results["latency"].get("30.0", {}).get(str(n_layers))
    full = stock or latency.get(str(n_layers))
    plot_wer_per_depth(results["wer"], out / "wer_per_depth.png",
                       {d: full / t for d, t in latency.items()} if full else None,
                       f"Whisper {hp['teacher_source']}, {hp['dataset']} fold {hp.get('fold')}",
                       "end-to-end speed-up vs the stock model" if stock else "end-to-end speed-up vs full depth")
    print(md)
    return results


def report(results: dict, hp: dict, depths, n_layers: int) -> str:
    """results.md: the slicing check, WER per depth and method (mean, 95 % t-interval over seeds), latency."""
    n = results["n"]
    parts = [f"Teacher `{hp['teacher_source']}`; data `{hp['dataset']}` (fold {hp.get('fold')}): {n['train']} train, "
             f"{n['valid']} valid, {n['test']} test utterances; seeds {list(hp['seeds'])}; "
             f"{hp['number_of_epochs']} epochs, drop_prob {hp['drop_prob']}, kd_weight {hp['kd_weight']}, "
             f"trained students' decoder layers {hp['student_decoder_layers'] or 'all'}, "
             f"encoder input {hp['encoder_seconds'] or 30} s, torch threads {torch.get_num_threads()}.\n"]
    if results["slicing"]:
        rows = [{"encoder input (s)": k, "full-depth WER (%)": round(v["wer"], 2), "words": v["words"]}
                for k, v in results["slicing"].items()]
        parts.append("Full pretrained model, what cropping the input (and the position table) does:\n\n"
                     + markdown_table(pd.DataFrame(rows)))
    rows = []
    for depth in depths:
        row = {"depth": depth, "layers": str(results["depth_layers"][str(depth)])}
        for method, per_depth in results["wer"].items():
            mean, half = mean_interval(per_depth[str(depth)])
            row[f"{method} WER (%)"] = f"{mean:.2f}" + (f" ± {half:.2f}" if half is not None else "")
        rows.append(row)
    parts.append(f"WER per encoder depth (policy {hp['depth_policy']}; mean ± 95 % t half-width over seeds where "
                 "more than one):\n\n" + markdown_table(pd.DataFrame(rows)))
    diffs = paired_seed_differences(results["wer"])
    if diffs:
        rows = [{"depth": r["depth"], "seeds": r["seeds"],
                 "DLD - RDLD (points)": f"{r['diff']:+.2f}" + (f" ± {r['half']:.2f}" if r["half"] is not None else ""),
                 "paired t p": "-" if r["p"] is None else f"{r['p']:.3f}"} for r in diffs]
        parts.append("DLD - RDLD per depth, paired by seed (negative: DLD better):\n\n" + markdown_table(pd.DataFrame(rows)))
    stock = results["latency"].get("30.0", {}).get(str(n_layers))
    steps = results.get("bench_tokens")
    decoding_note = (f"exactly {steps} decoder steps per utterance" if steps
                     else f"greedy until end of text (at most {hp['max_new_tokens']} tokens)")
    models = {"latency": "full decoder"}
    if "latency_compressed" in results:
        models["latency_compressed"] = f"decoder layers {results['decoder_layers']}"
    for key, label in models.items():
        for seconds, times in results[key].items():
            full = times[str(n_layers)] if str(n_layers) in times else max(times.values())
            lat = pd.DataFrame([{"depth": d, "seconds": round(t, 3), "speed-up vs full depth": round(full / t, 2),
                                 **({"speed-up vs stock (30 s, full depth, full decoder)": round(stock / t, 2)}
                                    if stock else {})}
                                for d, t in times.items()])
            parts.append(f"End-to-end latency, {label} (log-mel + encoder + greedy decoding, {decoding_note}), "
                         f"{hp['bench_utterances']} utterances in one batch, encoder input {seconds} s, median of "
                         f"{hp['bench_repeats']}:\n\n" + markdown_table(lat))
    timing = pd.DataFrame([{"stage": k, "seconds": round(v, 1)} for k, v in results["timings"].items()])
    parts.append("Wall time per stage:\n\n" + markdown_table(timing))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
