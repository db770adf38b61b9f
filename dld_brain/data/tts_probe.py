"""A probe set of spoken digit strings from Debian speech synthesisers (espeak-ng, flite, festival).

For evaluation only: never train on it. It checks whether an FSDD digit recogniser carries over to voices
that are not FSDD's (synthetic voices are a crude stand-in for new speakers and a clean, different channel).

Every available voice speaks the ten digits alone (isolated digits, each once) and the same seeded digit
strings (``min_digits..max_digits`` digits, by default 2-7, each length equally often); each file is resampled to the corpus rate (16 kHz mono,
16-bit) and listed in a manifest the FSDD recipe can score like its test set
(``ID, duration, wav, spk_id, wrd``; ``spk_id`` = ``engine:voice``)::

    python -m dld_brain.data.tts_probe --output results/tts_probe --per-voice 12
    python recipes/FSDD/train.py hparams/fsdd/teacher.yaml --test_only \\
        --test_csvs="{test: results/fsdd/prepared/test.csv, tts: results/tts_probe/tts.csv}"
    python -m dld_brain.data.tts_probe --score results/fsdd/teacher --manifest results/tts_probe/tts.csv \\
        --set tts --depth 6        # WER and WER_beam per voice and per string length (1 vs 2-7 digits)

Voices whose engine is not installed are skipped (logged); a voice that fails to synthesise raises
:class:`~dld_brain.data.manifest.DataPrepError` naming it.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import soundfile
import torch
import torchaudio

from dld_brain.data.fsdd import DIGIT_WORDS, _to_pcm16, digits_to_words
from dld_brain.data.manifest import DataPrepError, PrepMarker, write_manifest

logger = logging.getLogger(__name__)

#: (engine, voice): espeak-ng voices with variants (+f* female, +m* male), flite's built-in voices, festival's
#: kal diphone voice (Debian package festvox-kallpc16k).
VOICES: tuple[tuple[str, str], ...] = (
    ("espeak-ng", "en-us"), ("espeak-ng", "en-us+f3"), ("espeak-ng", "en-gb+f2"), ("espeak-ng", "en-gb-x-rp+m3"),
    ("espeak-ng", "en-gb-scotland+f4"), ("espeak-ng", "en-029+m7"),
    ("flite", "kal"), ("flite", "awb"), ("flite", "rms"), ("flite", "slt"),
    ("festival", "kal_diphone"),
)
ENGINE_BINARIES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}
PROBE_VERSION = 2


def available_voices(voices: Sequence[tuple[str, str]] = VOICES) -> list[tuple[str, str]]:
    """The voices whose engine binary is on PATH."""
    return [(engine, voice) for engine, voice in voices if shutil.which(ENGINE_BINARIES[engine])]


def synthesise(engine: str, voice: str, text: str, path: Path) -> None:
    """Speak ``text`` with ``engine``/``voice`` into the wav ``path`` (the engine's own rate)."""
    if engine == "espeak-ng":
        cmd, stdin = ["espeak-ng", "-v", voice, "-w", str(path), text], None
    elif engine == "flite":
        cmd, stdin = ["flite", "-voice", voice, "-t", text, "-o", str(path)], None
    elif engine == "festival":
        cmd, stdin = ["text2wave", "-eval", f"(voice_{voice})", "-o", str(path)], text
    else:
        raise DataPrepError(f"unknown TTS engine {engine!r}; known: {sorted(ENGINE_BINARIES)}")
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
        raise DataPrepError(f"{engine} voice {voice} failed on {text!r}: {proc.stderr.strip()[:300]}")


def digit_strings(count: int, seed: int = 2468, min_digits: int = 2, max_digits: int = 7,
                  isolated: bool = True) -> list[list[int]]:
    """With ``isolated``, the ten digits alone first (0..9, so every digit is probed on its own); then ``count``
    seeded strings whose lengths cycle through ``min_digits..max_digits`` (each length equally frequent),
    digits uniform."""
    rng = random.Random(seed)
    lengths = [min_digits + i % (max_digits - min_digits + 1) for i in range(count)]
    rng.shuffle(lengths)
    singles = [[d] for d in range(10)] if isolated else []
    return singles + [[rng.randrange(10) for _ in range(n)] for n in lengths]


def _load(path: Path, sample_rate: int) -> torch.Tensor:
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    clip = torch.from_numpy(audio.mean(axis=1))
    if rate != sample_rate:
        clip = torchaudio.functional.resample(clip, rate, sample_rate)
    peak = clip.abs().max()
    return clip * (0.9 / peak) if peak > 0.9 else clip


def write_tts_probe(output: str | Path, per_voice: int = 12, seed: int = 2468, sample_rate: int = 16000,
                    voices: Optional[Sequence[tuple[str, str]]] = None, min_digits: int = 2,
                    max_digits: int = 7, isolated: bool = True) -> Path:
    """Synthesise the probe under ``output`` (``wavs/`` and ``tts.csv``) and return the manifest path:
    per voice the ten isolated digits (``isolated``) and ``per_voice`` strings of ``min_digits..max_digits``
    digits. Skipped when a finished probe with the same options (and voices) is there."""
    output = Path(output)
    voices = available_voices() if voices is None else list(voices)
    if not voices:
        raise DataPrepError("no TTS engine found (apt-get install espeak-ng flite festival festvox-kallpc16k)")
    csv = output / "tts.csv"
    marker = PrepMarker(output, "tts_probe", dict(version=PROBE_VERSION, per_voice=per_voice, seed=seed,
                                                  sample_rate=sample_rate, voices=[list(v) for v in voices],
                                                  min_digits=min_digits, max_digits=max_digits,
                                                  isolated=isolated))
    if marker.done([csv]):
        return csv
    marker.path.unlink(missing_ok=True)
    wavs = output / "wavs"
    if wavs.exists():
        shutil.rmtree(wavs)
    wavs.mkdir(parents=True)
    strings = digit_strings(per_voice, seed, min_digits, max_digits, isolated)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, voice in voices:
            tag = f"{engine}_{voice}".replace("+", "_").replace("-", "_")
            for i, digits in enumerate(strings):
                raw = Path(tmp) / "raw.wav"
                synthesise(engine, voice, digits_to_words(digits).lower(), raw)
                samples = _to_pcm16(_load(raw, sample_rate))
                wav = wavs / f"tts_{tag}_{i:03d}.wav"
                soundfile.write(str(wav), samples, sample_rate, subtype="PCM_16")
                rows.append({"ID": wav.stem, "duration": f"{len(samples) / sample_rate:.3f}",
                             "wav": str(wav.resolve()), "spk_id": f"{engine}:{voice}",
                             "wrd": digits_to_words(digits)})
            logger.info("TTS probe: %d utterances from %s %s", len(strings), engine, voice)
    write_manifest(csv, rows)
    marker.mark()
    return csv


def wer_by_group(run_folder: str | Path, test_set: str, manifest: str | Path, depth: int) -> pd.DataFrame:
    """WER (%) per ``spk_id`` and per string kind (``isolated`` = 1 digit, ``strings`` = 2 or more) of one
    run's sweep at ``depth``: greedy (``wer_<set>_n<depth>.txt``) and beam (``..._beam.txt``, if written).
    Rows: ``group, utterances, words, WER[, WER_beam]``; the last row, ``all``, is the set's WER."""
    from dld_brain.study import parse_wer_details

    run_folder = Path(run_folder)
    meta = pd.read_csv(manifest)[["ID", "spk_id", "wrd"]]
    meta["kind"] = ["isolated" if len(str(w).split()) == 1 else "strings" for w in meta["wrd"]]
    scored = {}
    for column, suffix in (("WER", ""), ("WER_beam", "_beam")):
        path = run_folder / f"wer_{test_set}_n{depth}{suffix}.txt"
        if path.is_file():
            scored[column] = parse_wer_details(path)[["ID", "errors", "words"]].merge(meta, on="ID")
    if "WER" not in scored:
        raise DataPrepError(f"no wer_{test_set}_n{depth}.txt in {run_folder}: run the sweep on {test_set} first")
    rows = []
    groups = [(g, "spk_id") for g in sorted(meta["spk_id"].unique())] + [(k, "kind") for k in ("isolated", "strings")]
    for group, key in [*groups, ("all", None)]:
        row = {"group": group}
        for column, table in scored.items():
            part = table if key is None else table[table[key] == group]
            if part.empty:
                continue
            row.update(utterances=len(part), words=int(part["words"].sum()))
            row[column] = round(100.0 * part["errors"].sum() / max(part["words"].sum(), 1), 2)
        if len(row) > 1:
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dld_brain.data.tts_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="results/tts_probe", help="probe folder (wavs/ and tts.csv)")
    parser.add_argument("--per-voice", type=int, default=12, dest="per_voice",
                        help="multi-digit strings per voice (the ten isolated digits come on top)")
    parser.add_argument("--seed", type=int, default=2468)
    parser.add_argument("--score", help="a run folder: print WER per voice / kind instead of synthesising")
    parser.add_argument("--manifest", help="with --score: the scored set's manifest")
    parser.add_argument("--set", default="tts", dest="test_set", help="with --score: the set's name")
    parser.add_argument("--depth", type=int, default=None, help="with --score: depth (default: deepest swept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.score:
        depth = args.depth
        if depth is None:
            depth = int(pd.read_csv(Path(args.score) / f"depth_sweep_{args.test_set}.csv")["depth"].max())
        from dld_brain.sweep import markdown_table

        print(markdown_table(wer_by_group(args.score, args.test_set, args.manifest, depth)))
        return 0
    print(write_tts_probe(args.output, args.per_voice, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
