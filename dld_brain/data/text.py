"""Transcript normalisation shared by the corpora, so references and hypotheses follow one convention:
LibriSpeech's (upper case ASCII letters and digits, apostrophes kept, words separated by one space).

:func:`normalize_transcript` is the generic rule (LibriSpeech transcripts, model hypotheses, WER scoring);
:func:`normalize_tedlium` first maps TED-LIUM's stm conventions onto it.
"""

from __future__ import annotations

import re
import unicodedata

#: Text of the stm segments that carry no transcript (gaps, music, untranscribed speech).
TEDLIUM_IGNORE = "ignore_time_segment_in_scoring"

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_KEPT = re.compile(r"[^A-Z0-9' ]+")
# TED-LIUM markup: <unk>/<sil>/<s> tokens, {NOISE}/{BREATH} fillers, [laughter] events, and
# parenthesised groups: pronunciation variants "word(2)" and the "(talk-id)" keys ending release-1 lines.
_TEDLIUM_MARKUP = re.compile(r"<[^>]*>|\{[^}]*\}|\[[^\]]*\]|\([^)]*\)")
# TED-LIUM writes contractions as separate tokens ("it 's", "don 't", "we 're", "i 'd"); only these
# clitics are joined back, so words that start with an apostrophe ("'cause", "'em") stay words.
_CLITIC = re.compile(r"\s+('(?:s|t|re|ve|m|ll|d)|n't)(?![A-Za-z0-9'])", re.IGNORECASE)


def normalize_transcript(text: str) -> str:
    """Generic rule, applied to references and hypotheses alike before WER scoring.

    Typographic apostrophes become ``'``; accents are dropped (``café`` -> ``CAFE``); text is upper-cased;
    every character other than A-Z, 0-9 and ``'`` becomes a space (so ``twenty-one`` -> ``TWENTY ONE``);
    a word wrapped in quotes loses them (``'quoted'`` -> ``QUOTED``) but leading/trailing apostrophes
    that belong to the word stay (``'TIS``, ``STUDENTS'``); tokens made only of apostrophes are dropped;
    whitespace is collapsed. The rule is idempotent and leaves LibriSpeech transcripts unchanged.
    """
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    text = text.encode("ascii", "ignore").decode("ascii").upper()
    words = []
    for word in _NOT_KEPT.sub(" ", text).split():
        if len(word) > 2 and word[0] == word[-1] == "'":
            word = word[1:-1]
        if word.strip("'"):
            words.append(word)
    return " ".join(words)


def normalize_tedlium(text: str) -> str:
    """TED-LIUM stm text -> LibriSpeech-style transcript ("" when nothing scorable is left).

    Rules, in order: the ``ignore_time_segment_in_scoring`` marker gives ""; ``<unk>`` (an out-of-
    vocabulary word whose spelling the corpus does not give) and other ``<...>`` tokens, ``{NOISE}``-style
    fillers, ``[...]`` events and parenthesised groups (pronunciation variants ``the(2)`` -> ``the``) are
    removed, so neither the model nor the scorer sees a token no one can spell; split contractions are
    re-joined (``it 's`` -> ``IT'S``, ``don 't`` -> ``DON'T``, ``do n't`` -> ``DON'T``); then
    :func:`normalize_transcript`.
    """
    if text.strip() == TEDLIUM_IGNORE:
        return ""
    text = _TEDLIUM_MARKUP.sub(" ", text)
    text = _CLITIC.sub(r"\1", " ".join(text.split()))
    return normalize_transcript(text)
