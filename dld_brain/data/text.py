"""Transcript normalisation shared by the corpora, so references and hypotheses follow one convention
(LibriSpeech's: upper case, words separated by single spaces, apostrophes kept, no other punctuation)."""

from __future__ import annotations

import re

_KEEP = re.compile(r"[^A-Z0-9' ]+")
_SPACES = re.compile(r"\s+")
# TED-LIUM markup: <unk>, {NOISE}/{BREATH}, [laughter], pronunciation variants "word(2)"
_TEDLIUM_MARKUP = re.compile(r"<[^>]*>|\{[^}]*\}|\[[^\]]*\]")
_VARIANT = re.compile(r"\(\d+\)")
_CONTRACTION = re.compile(r" '(?=[a-z])")


def normalize_transcript(text: str) -> str:
    """Generic rule: upper case, punctuation other than apostrophes removed, spaces collapsed."""
    text = _KEEP.sub(" ", text.upper())
    text = " ".join(w.strip("'") or w for w in text.split())  # quotes around words, not contractions
    return _SPACES.sub(" ", text).strip()


def normalize_tedlium(text: str) -> str:
    """TED-LIUM stm text -> LibriSpeech style.

    Rules: ``<unk>`` and other ``<...>`` tokens, ``{NOISE}``-style fillers and ``[...]`` events are
    removed (they carry no scorable word; removing ``<unk>`` in references is the common choice when
    scoring with a different vocabulary); pronunciation variants ``word(2)`` lose the suffix; TED-LIUM's
    split contractions are re-joined (``it 's`` -> ``IT'S``, ``don 't`` -> ``DON'T``); then
    :func:`normalize_transcript`.
    """
    text = _TEDLIUM_MARKUP.sub(" ", text)
    text = _VARIANT.sub("", text)
    text = _CONTRACTION.sub("'", _SPACES.sub(" ", text.lower()))
    return normalize_transcript(text)
