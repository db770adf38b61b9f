"""Small corpora laid out exactly like LibriSpeech and TED-LIUM 3, built at test time from real FSDD audio.

The real corpora are not reachable here; these fixtures reproduce their folder structure, file names,
transcript formats (``.trans.txt``, ``.stm``) and audio formats (FLAC; NIST SPHERE 16 kHz 16-bit PCM),
with speech made of concatenated FSDD digit recordings (resampled 8 -> 16 kHz) whose words are the
transcripts. Deterministic for a given ``seed``. Pass a dict as ``truth`` to get back what was written
(int16 samples and text of every utterance/segment), to compare the prepared manifests against.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile
import torch
import torchaudio

RATE = 16000
WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
FSDD_SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas")
TAKES = 50  # FSDD has takes 0..49 of every digit by every speaker
CENTISECOND = RATE // 100  # TED-LIUM stm times have 2 decimals: segment bounds are multiples of this


@functools.lru_cache(maxsize=None)
def fsdd_clip(fsdd_dir: str, speaker: str, digit: int, take: int) -> np.ndarray:
    """One FSDD recording at 16 kHz as int16 (exactly what a 16-bit file will hold)."""
    clip, rate = soundfile.read(str(Path(fsdd_dir) / "recordings" / f"{digit}_{speaker}_{take}.wav"),
                                dtype="float32")
    clip = torchaudio.functional.resample(torch.from_numpy(clip), rate, RATE).numpy()
    return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16)


def digit_speech(fsdd_dir: Path, speaker: str, digits: Sequence[int], rng: random.Random,
                 pad_to: int = 1) -> np.ndarray:
    """int16 16 kHz speech of ``digits`` by one FSDD speaker, 50-200 ms pauses after each digit, padded
    with silence to a multiple of ``pad_to`` samples."""
    pieces = []
    for d in digits:
        pieces.append(fsdd_clip(str(fsdd_dir), speaker, d, rng.randrange(TAKES)))
        pieces.append(np.zeros(int(RATE * rng.uniform(0.05, 0.2)), dtype=np.int16))
    audio = np.concatenate(pieces)
    return np.concatenate([audio, np.zeros(-len(audio) % pad_to, dtype=np.int16)])


def make_librispeech_fixture(root: Path, fsdd_dir: Path,
                             splits: Sequence[str] = ("train-clean-100", "dev-clean", "test-clean"),
                             speakers_per_split: int = 2, chapters_per_speaker: int = 1,
                             utts_per_chapter: int = 3, seed: int = 0, truth: Optional[dict] = None) -> Path:
    """``root/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + ``<spk>-<chapter>.trans.txt``.

    Speaker and chapter IDs are numeric and unique across the corpus (speakers differ between splits, as
    in LibriSpeech); utterances are numbered ``0000``, ``0001``, ... Returns the ``LibriSpeech`` folder.
    ``truth`` (if given) receives ``{utt_id: {"split", "spk", "chapter", "audio", "words"}}``.
    """
    rng = random.Random(seed)
    corpus = Path(root) / "LibriSpeech"
    spk_id, chapter_id = 103, 1240
    for s_index, split in enumerate(splits):
        for k in range(speakers_per_split):
            fsdd_spk = FSDD_SPEAKERS[(s_index * speakers_per_split + k) % len(FSDD_SPEAKERS)]
            for _ in range(chapters_per_speaker):
                folder = corpus / split / str(spk_id) / str(chapter_id)
                folder.mkdir(parents=True)
                lines = []
                for u in range(utts_per_chapter):
                    digits = [rng.randrange(10) for _ in range(rng.randint(3, 6))]
                    utt, words = f"{spk_id}-{chapter_id}-{u:04d}", " ".join(WORDS[d] for d in digits)
                    audio = digit_speech(fsdd_dir, fsdd_spk, digits, rng)
                    soundfile.write(str(folder / f"{utt}.flac"), audio, RATE, format="FLAC", subtype="PCM_16")
                    lines.append(f"{utt} {words}")
                    if truth is not None:
                        truth[utt] = dict(split=split, spk=str(spk_id), chapter=str(chapter_id), audio=audio,
                                          words=words)
                (folder / f"{spk_id}-{chapter_id}.trans.txt").write_text("\n".join(lines) + "\n")
                chapter_id += 13
            spk_id += 7
    return corpus


class _Talk:
    """Audio and stm lines of one fixture talk, built segment by segment."""

    def __init__(self, name: str, split: str, truth: Optional[dict]):
        self.name, self.split, self.truth = name, split, truth
        self.pieces: list[np.ndarray] = [np.zeros(RATE // 2, dtype=np.int16)]  # 0.5 s lead-in
        self.lines: list[str] = []

    def add(self, audio: np.ndarray, text: str, kind: str) -> None:
        """Append ``audio`` and its stm line (gaps get TED-LIUM's inter_segment_gap speaker and label)."""
        start = sum(len(p) for p in self.pieces)
        stop = start + len(audio)
        speaker, label = (self.name, "<o,f0,male>")
        if kind == "ignore":
            speaker, label = "inter_segment_gap", "<o,,unknown>"
        self.pieces.append(audio)
        line = f"{self.name} 1 {speaker} {start / RATE:.2f} {stop / RATE:.2f} {label} {text}"
        self.lines.append(line.rstrip())
        if self.truth is not None:
            self.truth[(self.name, start, stop)] = dict(split=self.split, kind=kind, text=text, speaker=speaker,
                                                        audio=audio)

    def write(self, sph_dir: Path, stm_dir: Path) -> None:
        """Write ``<talk>.sph`` (NIST SPHERE, 16 kHz, 16-bit PCM, 0.3 s tail) and ``<talk>.stm``."""
        audio = np.concatenate([*self.pieces, np.zeros(int(RATE * 0.3), dtype=np.int16)])
        soundfile.write(str(sph_dir / f"{self.name}.sph"), audio, RATE, format="NIST", subtype="PCM_16")
        (stm_dir / f"{self.name}.stm").write_text("\n".join(self.lines) + "\n")


def make_tedlium3_fixture(root: Path, fsdd_dir: Path, splits: Sequence[str] = ("train", "dev", "test"),
                          talks_per_split: int = 1, segments_per_talk: int = 4, seed: int = 0,
                          truth: Optional[dict] = None) -> Path:
    """``root/TEDLIUM_release-3/legacy/<split>/{sph,stm}/<talk>.{sph,stm}``; returns ``TEDLIUM_release-3``.

    Each talk: 0.5 s of silence, then ``segments_per_talk`` digit-string segments (lower case; the second
    holds an ``<unk>``) each followed by a 0.5 s ``inter_segment_gap`` line marked
    ``ignore_time_segment_in_scoring``, a segment with a split contraction (``it 's one two``), a segment
    with empty text, and 0.3 s of silence. All bounds are whole centiseconds, so the stm times are exact.
    ``truth`` (if given) receives ``{(talk, start_sample, stop_sample): {"split", "kind", "text",
    "speaker", "audio"}}`` for every stm line, ``kind`` being ``speech``, ``ignore`` or ``empty``.
    """
    rng = random.Random(seed)
    release = Path(root) / "TEDLIUM_release-3"
    for s_index, split in enumerate(splits):
        sph_dir, stm_dir = release / "legacy" / split / "sph", release / "legacy" / split / "stm"
        sph_dir.mkdir(parents=True)
        stm_dir.mkdir(parents=True)
        for t in range(talks_per_split):
            fsdd_spk = FSDD_SPEAKERS[(s_index * talks_per_split + t) % len(FSDD_SPEAKERS)]
            talk = _Talk(f"{fsdd_spk.title()}Talk{s_index}{t}_2010X", split, truth)
            gap = np.zeros(RATE // 2, dtype=np.int16)
            for k in range(segments_per_talk):
                digits = [rng.randrange(10) for _ in range(rng.randint(3, 5))]
                words = [WORDS[d].lower() for d in digits]
                if k == 1:
                    words.insert(len(words) // 2, "<unk>")
                talk.add(digit_speech(fsdd_dir, fsdd_spk, digits, rng, CENTISECOND), " ".join(words), "speech")
                talk.add(gap, "ignore_time_segment_in_scoring", "ignore")
            talk.add(digit_speech(fsdd_dir, fsdd_spk, [1, 2], rng, CENTISECOND), "it 's one two", "speech")
            talk.add(np.zeros(int(RATE * 0.4), dtype=np.int16), "", "empty")
            talk.write(sph_dir, stm_dir)
    return release
