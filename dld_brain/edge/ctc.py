"""CTC decoding in NumPy: greedy, and a lexicon-constrained prefix beam search that only outputs words of a
given lexicon (over any token inventory whose tokens are strings, e.g. SentencePiece characters)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

#: SentencePiece's word-boundary marker: a piece starting with it starts a new word.
WORD_BOUNDARY = "\u2581"


def tokens_to_text(ids: Iterable[int], pieces: Sequence[str]) -> str:
    """Token ids -> text as SentencePiece's ``decode_ids`` does for plain pieces: concatenate, turn the
    boundary marker into spaces, drop the leading one."""
    text = "".join(pieces[i] for i in ids).replace(WORD_BOUNDARY, " ")
    return text.lstrip(" ")


def ctc_greedy(log_probs: np.ndarray, blank: int = 0) -> list[int]:
    """Best path of (frames, vocab) log-probabilities: argmax per frame, repeats merged, blanks removed."""
    best = np.asarray(log_probs).argmax(axis=-1)
    out, previous = [], None
    for token in best.tolist():
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


class Lexicon:
    """A word list, and the set of all its words' prefixes (what a partial last word may be)."""

    def __init__(self, words: Iterable[str]):
        self.words = {w for w in (str(w).strip() for w in words) if w}
        if not self.words:
            raise ValueError("the lexicon is empty: give at least one word")
        self.prefixes = {w[:i] for w in self.words for i in range(len(w) + 1)}

    def allows(self, text: str, final: bool = False) -> bool:
        """True if every finished word of ``text`` is in the lexicon and its last word is a prefix of one
        (``final``: the last word must be a whole word too)."""
        words = text.split(" ")
        *done, last = words
        if any(w and w not in self.words for w in done):
            return False
        return (last in self.words or last == "") if final else last in self.prefixes


def _logsumexp(a: float, b: float) -> float:
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    hi = max(a, b)
    return hi + float(np.log1p(np.exp(min(a, b) - hi)))


def ctc_lexicon_search(log_probs: np.ndarray, pieces: Sequence[str], lexicon: Iterable[str] | Lexicon,
                       blank: int = 0, beam: int = 16, token_beam: int = 8) -> list[int]:
    """Word-constrained CTC prefix beam search: the most probable token sequence whose text consists only of
    lexicon words. A prefix is extended by a token only if its text stays a sequence of lexicon words with a
    last word that is a prefix of one; at the end, prefixes whose last word is unfinished are dropped.
    ``beam`` prefixes are kept per frame and only the ``token_beam`` most probable tokens of a frame are
    tried. Returns [] when no lexicon word fits at all."""
    lex = lexicon if isinstance(lexicon, Lexicon) else Lexicon(lexicon)
    lp = np.asarray(log_probs, dtype=np.float64)
    texts: dict[tuple, str] = {(): ""}
    # prefix -> (log p ending in blank, log p ending in its last token)
    beams: dict[tuple, tuple[float, float]] = {(): (0.0, -np.inf)}
    for frame in lp:
        candidates = [int(t) for t in np.argsort(frame)[::-1][:token_beam]]
        if blank not in candidates:
            candidates.append(blank)
        new: dict[tuple, list[float]] = {}

        def add(prefix, pb=-np.inf, pnb=-np.inf):
            cur = new.setdefault(prefix, [-np.inf, -np.inf])
            cur[0], cur[1] = _logsumexp(cur[0], pb), _logsumexp(cur[1], pnb)

        for prefix, (pb, pnb) in beams.items():
            total = _logsumexp(pb, pnb)
            for t in candidates:
                p = float(frame[t])
                if t == blank:
                    add(prefix, pb=total + p)
                    continue
                last = prefix[-1] if prefix else None
                if t == last:
                    add(prefix, pnb=pnb + p)  # repeat without a blank between: same prefix
                    extended_score = pb + p    # repeat after a blank: a new token
                else:
                    extended_score = total + p
                extended = prefix + (t,)
                if extended not in texts:
                    texts[extended] = tokens_to_text(extended, pieces)
                if lex.allows(texts[extended]):
                    add(extended, pnb=extended_score)
        ranked = sorted(new.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)
        beams = {k: (v[0], v[1]) for k, v in ranked[:beam]}
    finals = [(k, _logsumexp(*v)) for k, v in beams.items() if lex.allows(texts[k], final=True)]
    if not finals:
        return []
    return list(max(finals, key=lambda kv: kv[1])[0])
