"""Small corpora laid out exactly like LibriSpeech and TED-LIUM 3, built at test time from real FSDD audio.

The real corpora are not reachable here; these fixtures reproduce their folder structure, file names,
transcript formats (``.trans.txt``, ``.stm``) and audio formats (FLAC, NIST SPHERE 16 kHz 16-bit), with
speech made of concatenated FSDD digits whose words are the transcripts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch
import torchaudio

WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
FSDD_SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas")


def digit_speech(fsdd_dir: Path, speaker: str, digits: Sequence[int], rng: random.Random) -> np.ndarray:
    """16 kHz float32 speech of ``digits`` by one FSDD speaker, with short silences between clips."""
    pieces = []
    for d in digits:
        clip, rate = soundfile.read(str(fsdd_dir / "recordings" / f"{d}_{speaker}_{rng.randrange(50)}.wav"),
                                    dtype="float32")
        pieces.append(torchaudio.functional.resample(torch.from_numpy(clip), rate, 16000).numpy())
        pieces.append(np.zeros(int(16000 * rng.uniform(0.05, 0.2)), dtype="float32"))
    return np.concatenate(pieces)


def make_librispeech_fixture(root: Path, fsdd_dir: Path,
                             splits: Sequence[str] = ("train-clean-100", "dev-clean", "test-clean"),
                             speakers_per_split: int = 2, chapters_per_speaker: int = 1,
                             utts_per_chapter: int = 3, seed: int = 0) -> Path:
    """``root/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``.trans.txt``."""
    rng = random.Random(seed)
    corpus = Path(root) / "LibriSpeech"
    spk_id = 103
    for s_index, split in enumerate(splits):
        for k in range(speakers_per_split):
            fsdd_spk = FSDD_SPEAKERS[(s_index * speakers_per_split + k) % len(FSDD_SPEAKERS)]
            for c in range(chapters_per_speaker):
                chapter = 1240 + 17 * c + s_index
                folder = corpus / split / str(spk_id) / str(chapter)
                folder.mkdir(parents=True)
                lines = []
                for u in range(utts_per_chapter):
                    digits = [rng.randrange(10) for _ in range(rng.randint(3, 6))]
                    utt = f"{spk_id}-{chapter}-{u:04d}"
                    soundfile.write(str(folder / f"{utt}.flac"), digit_speech(fsdd_dir, fsdd_spk, digits, rng),
                                    16000, format="FLAC", subtype="PCM_16")
                    lines.append(f"{utt} {' '.join(WORDS[d] for d in digits)}")
                (folder / f"{spk_id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
            spk_id += 7
    return corpus


def make_tedlium3_fixture(root: Path, fsdd_dir: Path, splits: Sequence[str] = ("train", "dev", "test"),
                          talks_per_split: int = 1, segments_per_talk: int = 4, seed: int = 0) -> Path:
    """``root/TEDLIUM_release-3/legacy/<split>/{sph,stm}/`` with NIST SPHERE audio and real-format stm.

    Each talk has digit-string segments, an ``ignore_time_segment_in_scoring`` gap, a segment with
    ``<unk>`` and a split contraction (``it 's``), and an empty segment.
    """
    rng = random.Random(seed)
    release = Path(root) / "TEDLIUM_release-3"
    for s_index, split in enumerate(splits):
        sph_dir, stm_dir = release / "legacy" / split / "sph", release / "legacy" / split / "stm"
        sph_dir.mkdir(parents=True)
        stm_dir.mkdir(parents=True)
        for t in range(talks_per_split):
            talk = f"SpeakerName{s_index}{t}_2010X"
            speaker = FSDD_SPEAKERS[(s_index + t) % len(FSDD_SPEAKERS)]
            audio, lines, now = [np.zeros(8000, dtype="float32")], [], 0.5
            for k in range(segments_per_talk):
                digits = [rng.randrange(10) for _ in range(rng.randint(3, 5))]
                speech = digit_speech(fsdd_dir, speaker, digits, rng)
                start, end = now, now + len(speech) / 16000
                text = " ".join(WORDS[d].lower() for d in digits)
                if k == 1:
                    text = f"{text} <unk>"
                lines.append(f"{talk} 1 {talk} {start:.2f} {end:.2f} <o,f0,male> {text}")
                gap = np.zeros(8000, dtype="float32")
                lines.append(f"{talk} 1 inter_segment_gap {end:.2f} {end + 0.5:.2f} <o,,unknown> "
                             "ignore_time_segment_in_scoring")
                audio += [speech, gap]
                now = end + 0.5
            # a contraction segment and an empty one, as in real stm files
            speech = digit_speech(fsdd_dir, speaker, [1, 2], rng)
            lines.append(f"{talk} 1 {talk} {now:.2f} {now + len(speech) / 16000:.2f} <o,f0,male> it 's one two")
            audio.append(speech)
            now += len(speech) / 16000
            lines.append(f"{talk} 1 {talk} {now:.2f} {now + 0.3:.2f} <o,f0,male> ")
            audio.append(np.zeros(int(16000 * 0.4), dtype="float32"))
            soundfile.write(str(sph_dir / f"{talk}.sph"), np.concatenate(audio), 16000, format="NIST",
                            subtype="PCM_16")
            (stm_dir / f"{talk}.stm").write_text("\n".join(lines) + "\n")
    return release
