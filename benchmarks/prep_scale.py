#!/usr/bin/env python3
"""LibriSpeech preparation and a launch's data checks at scale, projected linearly to the 281,241
utterances of LibriSpeech 960 h.

Builds, in a temporary folder (never in the repository), a LibriSpeech-layout tree
``train-clean-100/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``.trans.txt`` of ``--files`` symbolic
links to the real audio beside the clone (FSDD WAV recordings and the coffee-order FLAC files; libsndfile
reads a file by its content, so a ``.flac`` name on WAV content costs the same header read), then times

* preparation: :func:`dld_brain.data.librispeech.prepare_librispeech` (transcripts, header of every file,
  manifest written), with the headers read in one process (``SB_NUM_PROC=1``) and by SpeechBrain's
  ``parallel_map`` with ``--workers`` processes (default: every CPU this process may use);
* a launch's data checks before the fix: every row's header checked in the launching process
  (:func:`dld_brain.validation.audio_problem`, what every rank did for every method and evaluation);
* the first launch after the fix: the checks run once in parallel and are cached beside the manifest
  (:func:`dld_brain.validation.cached_audio_problems`);
* every later launch: the manifest is read and hashed, the cached checks are reused.

The files are read once before timing, so every figure is for a warm page cache (a real corpus on a cold
disk adds its read time to preparation and to the first launch, not to later launches).

Usage: python benchmarks/prep_scale.py [--files 20000] [--level header] [--workers N]
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speechbrain.utils.parallel  # noqa: E402,F401  (imported here, as in a recipe: not timed)

from dld_brain.data.librispeech import prepare_librispeech  # noqa: E402
from dld_brain.data.manifest import read_manifest  # noqa: E402
from dld_brain.validation import audio_problem, audio_check_sidecar, cached_audio_problems  # noqa: E402

LIBRISPEECH_960H_UTTERANCES = 281_241
SHARED = Path(os.environ.get("DLD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")


def sources() -> list[tuple[Path, str]]:
    """(audio file, transcript) of the real recordings beside the clone."""
    found = [(p, WORDS[int(p.name.split("_")[0])]) for p in sorted((SHARED / "fsdd" / "recordings").glob("*.wav"))]
    found += [(p, "COFFEE ORDER") for p in sorted((SHARED / "speech_to_intent" / "audio").glob("*.flac"))]
    if not found:
        sys.exit(f"error: no audio found under {SHARED} (set DLD_SHARED_DATA to the folder holding fsdd/)")
    return found


def build_tree(root: Path, files: int, per_chapter: int = 100) -> Path:
    """``root/LibriSpeech/train-clean-100`` holding ``files`` utterances, ``per_chapter`` per chapter."""
    audio = sources()
    split = root / "LibriSpeech" / "train-clean-100"
    for first in range(0, files, per_chapter):
        spk, chapter = 100 + first // (per_chapter * 4), 1000 + first // per_chapter
        folder = split / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for n in range(first, min(first + per_chapter, files)):
            source, text = audio[n % len(audio)]
            utt = f"{spk}-{chapter}-{n - first:04d}"
            (folder / f"{utt}.flac").symlink_to(source)
            lines.append(f"{utt} {text}")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


def timed(fn):
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--level", default="header", choices=("header", "full"), help="the recipes' check_audio")
    parser.add_argument("--workers", type=int, default=None, help="processes for parallel_map (default: CPUs)")
    args = parser.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="dld_prep_scale_"))
    try:
        build_s, corpus = timed(lambda: build_tree(tmp, args.files))
        for source, _ in sources():  # warm the page cache, so all timings below see the same disk state
            source.read_bytes()
        prep = {}
        for procs in (1, workers):  # headers read in this process, then by parallel_map's worker processes
            os.environ["SB_NUM_PROC"] = str(procs)
            prep[procs], outputs = timed(lambda: prepare_librispeech(
                corpus, tmp / f"prepared{procs}", tr_splits=["train-clean-100"], dev_splits=[], te_splits=[]))
        os.environ["SB_NUM_PROC"] = str(workers)
        csv = outputs["train"]

        def rows():  # what a launch reads: the manifest, $data_root replaced by the corpus folder
            return read_manifest(csv, replacements={"data_root": corpus})

        assert len(rows()) == args.files, f"{len(rows())} rows for {args.files} files"
        before_s, _ = timed(lambda: [audio_problem(r["wav"], 0.1, 1e-4, args.level) for r in rows()])
        first_s, problems = timed(lambda: cached_audio_problems(csv, rows(), args.level, process_count=workers,
                                                                data_root=str(corpus)))
        assert audio_check_sidecar(csv).is_file() and not problems
        later_s, again = timed(lambda: cached_audio_problems(csv, rows(), args.level, data_root=str(corpus)))
        assert again == problems
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    scale = LIBRISPEECH_960H_UTTERANCES / args.files
    print(f"\nLibriSpeech-layout tree of {args.files} files (symlinks to {len(sources())} real recordings), "
          f"check_audio={args.level}, {workers} worker processes")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown cpu'}), "
          f"load average {os.getloadavg()[0]:.1f}; tree built in {build_s:.1f} s")
    print(f"| step | {args.files} files (s) | projected to {LIBRISPEECH_960H_UTTERANCES} utterances (min) |")
    print("| --- | --- | --- |")
    for name, seconds in (("preparation, headers read in one process", prep[1]),
                          (f"preparation, headers read by {workers} processes (parallel_map)", prep[workers]),
                          ("launch checks before the fix (sequential, every launch and rank)", before_s),
                          ("first launch after the fix (parallel check, cached)", first_s),
                          ("every later launch (cache reused)", later_s)):
        print(f"| {name} | {seconds:.2f} | {seconds * scale / 60:.2f} |")
    print(f"wall time of the benchmark: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
