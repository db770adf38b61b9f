"""Score a hypothesis file against a reference file: WER (or CER) with jiwer, per-utterance details as
SpeechBrain's ``ErrorRateStats.write_stats`` writes them (``wer_*.txt``).

Both files hold one utterance per line, ``<utterance-id> <words...>`` (Kaldi / SpeechBrain text format);
with ``--no_ids`` lines are matched by position instead. A reference without hypothesis counts as all
deletions; hypotheses without reference are reported and ignored.

Usage::

    python -m dld_brain.score --ref ref.txt --hyp hyp.txt            # WER, details on stdout
    python -m dld_brain.score --ref ref.txt --hyp hyp.txt --cer --out cer_details.txt
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import jiwer


class ScoreError(ValueError):
    """Unreadable or inconsistent input files; the message names the file and what to do."""


@dataclass
class UttScore:
    """Edit counts of one utterance and its alignment (list of (ref token, op, hyp token))."""

    utt_id: str
    ref_len: int
    ins: int = 0
    dels: int = 0
    subs: int = 0
    alignment: list = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs


def read_text(path: Path, with_ids: bool = True) -> dict[str, str]:
    """{utterance id: text} from a text file (ids are line numbers with ``with_ids=False``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ScoreError(f"cannot read {path}: {err.strerror or err}" if isinstance(err, OSError)
                         else f"{path} is not UTF-8 text") from None
    texts: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not with_ids:
            texts[str(number)] = line.strip()
            continue
        if not line.strip():
            continue
        utt, _, text = line.strip().partition(" ")
        if utt in texts:
            raise ScoreError(f"{path}:{number}: utterance id {utt!r} appears twice (use --no_ids for files "
                             "without ids)")
        texts[utt] = text.strip()
    return texts


def score_utterance(utt_id: str, ref: str, hyp: str, cer: bool = False) -> UttScore:
    """Edit counts and alignment of one utterance with jiwer (words, or characters with ``cer``)."""
    process = jiwer.process_characters if cer else jiwer.process_words
    ref_tokens = list(ref) if cer else ref.split()
    if not ref_tokens:  # jiwer needs a reference: an empty one makes every hypothesis token an insertion
        hyp_tokens = list(hyp) if cer else hyp.split()
        return UttScore(utt_id, 0, ins=len(hyp_tokens), alignment=[(None, "I", t) for t in hyp_tokens])
    out = process(ref, hyp)
    refs, hyps = out.references[0], out.hypotheses[0]
    alignment = []
    for chunk in out.alignments[0]:
        r = refs[chunk.ref_start_idx:chunk.ref_end_idx]
        h = hyps[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if chunk.type == "equal":
            alignment += [(a, "=", b) for a, b in zip(r, h)]
        elif chunk.type == "substitute":
            alignment += [(a, "S", b) for a, b in zip(r, h)]
        elif chunk.type == "delete":
            alignment += [(a, "D", None) for a in r]
        else:
            alignment += [(None, "I", b) for b in h]
    return UttScore(utt_id, len(refs), out.insertions, out.deletions, out.substitutions, alignment)


def score_texts(refs: dict[str, str], hyps: dict[str, str], cer: bool = False) -> list[UttScore]:
    """Per-utterance scores of every reference (missing hypotheses = empty)."""
    return [score_utterance(utt, ref, hyps.get(utt, ""), cer) for utt, ref in refs.items()]


def _rate(errors: int, total: int) -> float:
    return 100.0 * errors / total if total else 0.0


def summary(scores: Sequence[UttScore]) -> dict:
    """Corpus totals: error rate (%), insertions, deletions, substitutions, scored tokens, sentence errors."""
    total = sum(s.ref_len for s in scores)
    ins, dels, subs = (sum(getattr(s, k) for s in scores) for k in ("ins", "dels", "subs"))
    wrong = sum(1 for s in scores if s.errors)
    return {"error_rate": _rate(ins + dels + subs, total), "insertions": ins, "deletions": dels,
            "substitutions": subs, "num_scored_tokens": total, "num_erroneous_sents": wrong,
            "num_scored_sents": len(scores), "SER": _rate(wrong, len(scores))}


def _align_rows(alignment: list) -> str:
    cols = [("<eps>" if r is None else r, op if op != "=" else "=", "<eps>" if h is None else h)
            for r, op, h in alignment]
    widths = [max(len(c) for c in col) for col in cols]
    return "\n".join(" ; ".join(col[row].center(w) for col, w in zip(cols, widths)) for row in range(3))


def format_details(scores: Sequence[UttScore], name: str = "WER", missing: int = 0) -> str:
    """Text in the layout of SpeechBrain's ``ErrorRateStats.write_stats``."""
    s = summary(scores)
    sep = "=" * 80
    lines = [
        f"%{name} {s['error_rate']:.2f} [ {s['insertions'] + s['deletions'] + s['substitutions']} / "
        f"{s['num_scored_tokens']}, {s['insertions']} ins, {s['deletions']} del, {s['substitutions']} sub ]",
        f"%SER {s['SER']:.2f} [ {s['num_erroneous_sents']} / {s['num_scored_sents']} ]",
        f"Scored {s['num_scored_sents']} sentences, {missing} not present in hyp.",
        sep, "ALIGNMENTS", "", "Format:", f"<utterance-id>, {name} DETAILS",
        "<eps> ; reference  ; on ; the ; first ; line", "  I   ;     S      ; =  ;  =  ;   S   ;   D  ",
        " and  ; hypothesis ; on ; the ; third ; <eps>", sep,
    ]
    for u in scores:
        lines.append(f"{u.utt_id}, %{name} {_rate(u.errors, u.ref_len):.2f} [ {u.errors} / {u.ref_len}, "
                     f"{u.ins} ins, {u.dels} del, {u.subs} sub ]")
        if u.alignment:
            lines.append(_align_rows(u.alignment))
        lines.append(sep)
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: score, print the summary line (and the details unless --out names a file)."""
    parser = argparse.ArgumentParser(prog="python -m dld_brain.score", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, type=Path, help="reference text file")
    parser.add_argument("--hyp", required=True, type=Path, help="hypothesis text file")
    parser.add_argument("--cer", action="store_true", help="character error rate instead of word error rate")
    parser.add_argument("--no_ids", action="store_true", help="lines have no utterance id: match by position")
    parser.add_argument("--out", type=Path, default=None, help="write the per-utterance details here")
    args = parser.parse_args(argv)
    try:
        refs = read_text(args.ref, not args.no_ids)
        hyps = read_text(args.hyp, not args.no_ids)
        if not refs:
            raise ScoreError(f"{args.ref} has no utterances")
        missing = [u for u in refs if u not in hyps]
        extra = [u for u in hyps if u not in refs]
        if len(missing) == len(refs) and hyps:
            raise ScoreError(f"no utterance id of {args.hyp} is in {args.ref} (first ids: {list(hyps)[:3]} vs "
                             f"{list(refs)[:3]}); use --no_ids for files without ids")
        name = "CER" if args.cer else "WER"
        scores = score_texts(refs, hyps, args.cer)
        details = format_details(scores, name, len(missing))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(details)
            print(details.splitlines()[0])
        else:
            print(details, end="")
        if extra:
            print(f"warning: {len(extra)} hypotheses have no reference and were ignored (e.g. {extra[0]})",
                  file=sys.stderr)
    except (ScoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
