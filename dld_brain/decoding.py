"""Decoding CTC posteriors into words: greedy, beam search, word-constrained (lexicon) beam search and an
optional KenLM n-gram, for every CTC model of this project (any depth, any tokenizer).

Backend: the flashlight beam-search decoder behind ``torchaudio.models.decoder.ctc_decoder`` (package
``flashlight-text``). Why this one rather than SpeechBrain's own ``CTCBeamSearcher`` /
``CTCPrefixBeamSearcher`` (``speechbrain.decoders.ctc``):

* **a lexicon makes non-words impossible.** Flashlight's lexicon decoder searches over a trie of the
  lexicon's spellings, so a hypothesis can only ever be a sequence of lexicon words; SpeechBrain's searchers
  have no lexicon and can still emit any character string (an LM only makes non-words less likely);
* **KenLM without a compiler.** The ``flashlight-text`` wheel ships KenLM built in (ARPA or binary models);
  SpeechBrain's searchers (and pyctcdecode) need the ``kenlm`` Python module, which PyPI has only as a source
  package to compile;
* **speed.** The search is C++ (a few ms per utterance here, see the ``beam_decode_ms`` column of the depth
  sweep), where SpeechBrain's searchers loop in Python.

torchaudio 2.11 still provides ``ctc_decoder``; it needs ``flashlight-text`` at run time (the error without it
names the package). Greedy decoding (``beam_size=0``) uses SpeechBrain's ``ctc_greedy_decode`` and needs
nothing extra.

A lexicon file has one word per line followed by its spelling in the model's tokens
(``ONE ▁ O N E`` for a character model); :func:`write_lexicon` writes one from a word list with the model's
SentencePiece tokenizer, e.g. the words of the training transcripts (``lexicon: auto`` in the FSDD recipe).

>>> decoder = CTCDecoder(tokenizer, beam_size=10, lexicon="lexicon.txt")   # doctest: +SKIP
>>> words, tokens = decoder.decode(log_probs, wav_lens)                     # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

logger = logging.getLogger(__name__)

#: The word delimiter of SentencePiece; used as flashlight's silence token when the vocabulary has it alone.
WORD_BOUNDARY = "\u2581"
#: Decoder keys read from the recipe hparams (and written into the inference bundle) with their defaults.
DECODER_DEFAULTS = {"beam_size": 10, "lexicon": None, "lm_path": None, "lm_weight": 0.5, "word_score": 0.0}


class DecoderConfigError(ValueError):
    """A lexicon / LM / decoder setting that cannot be used; the message names the file or key."""


@register_checkpoint_hooks
class BundleFile:
    """A file of an inference bundle (lexicon, n-gram LM) that SpeechBrain's ``Pretrainer`` fetches: after
    loading, :attr:`path` is the local copy (so the bundle works from a folder, a moved copy or the hub)."""

    def __init__(self, path: Optional[Union[str, Path]] = None):
        self.path = Path(path) if path is not None else None

    @mark_as_saver
    def _save(self, path) -> None:
        shutil.copyfile(self.path, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        if self.path is None:
            raise DecoderConfigError("bundle file not loaded yet (load the bundle with from_hparams)")
        return str(self.path)


def _sp(tokenizer):
    """The SentencePieceProcessor of a SpeechBrain ``SentencePiece`` wrapper (or the processor itself)."""
    return tokenizer.sp if hasattr(tokenizer, "sp") else tokenizer


def vocabulary(tokenizer) -> list[str]:
    """The model's output tokens in index order (SentencePiece pieces)."""
    sp = _sp(tokenizer)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def spell(word: str, tokenizer, blank_index: int = 0) -> Optional[list[str]]:
    """The spelling of ``word`` in the model's tokens (a lone leading word boundary dropped: it is the
    decoder's silence), or None when a character is outside the vocabulary."""
    sp = _sp(tokenizer)
    ids = sp.encode_as_ids(word)
    if not ids or any(i == blank_index or i == sp.unk_id() for i in ids):
        return None
    pieces = [sp.id_to_piece(i) for i in ids]
    if len(pieces) > 1 and pieces[0] == WORD_BOUNDARY:
        pieces = pieces[1:]
    return pieces


def words_of_transcripts(csv_paths: Iterable[Union[str, Path]], column: str = "wrd") -> list[str]:
    """The sorted distinct words of the ``column`` of manifest CSVs (e.g. the training transcripts)."""
    words: set[str] = set()
    for path in csv_paths:
        path = Path(path)
        if not path.is_file():
            raise DecoderConfigError(f"lexicon: auto needs the transcripts, but {path} does not exist")
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                words.update(str(row.get(column) or "").split())
    if not words:
        raise DecoderConfigError(f"lexicon: auto found no words in the '{column}' column of {list(csv_paths)}")
    return sorted(words)


def write_lexicon(words: Iterable[str], tokenizer, path: Union[str, Path], blank_index: int = 0) -> Path:
    """Write ``word<TAB>spelling`` lines for the words the tokenizer can spell (others are skipped with a
    warning); returns the path."""
    lines, skipped = [], []
    for word in dict.fromkeys(words):
        pieces = spell(word, tokenizer, blank_index)
        if pieces is None:
            skipped.append(word)
        else:
            lines.append(f"{word}\t{' '.join(pieces)}")
    if skipped:
        logger.warning("lexicon: %d words have characters outside the vocabulary and were left out: %s",
                       len(skipped), " ".join(skipped[:10]))
    if not lines:
        raise DecoderConfigError(f"lexicon {path}: none of the words can be spelled with the model's tokens")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def read_lexicon(path: Union[str, Path], tokens: Sequence[str]) -> dict[str, list[list[str]]]:
    """``{word: [spelling, ...]}`` of a lexicon file; DecoderConfigError naming the file and line when a line
    has no spelling or uses a token the model does not have."""
    path = Path(path)
    if not path.is_file():
        raise DecoderConfigError(f"lexicon file {path} does not exist (give a 'WORD tok tok ...' file per line)")
    known, lexicon = set(tokens), {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DecoderConfigError(f"{path}:{number}: '{line}' has no spelling (expected 'WORD tok tok ...')")
        unknown = [t for t in parts[1:] if t not in known]
        if unknown:
            raise DecoderConfigError(f"{path}:{number}: tokens {unknown} are not in the model's vocabulary; "
                                     "write spellings in the model's tokens (see dld_brain.decoding.write_lexicon)")
        lexicon.setdefault(parts[0], []).append(parts[1:])
    if not lexicon:
        raise DecoderConfigError(f"lexicon file {path} is empty")
    return lexicon


class CTCDecoder:
    """Greedy (``beam_size=0``) or beam-search decoding of CTC log-probabilities (B, T, V), optionally
    restricted to the words of ``lexicon`` (a file, see :func:`read_lexicon`) and scored with a KenLM
    n-gram ``lm`` (ARPA or binary; over the lexicon's words, or over tokens without a lexicon).

    ``lm_weight`` scales the LM log-probability, ``word_score`` is added per emitted word (both only act with
    an LM or a lexicon). The flashlight search is built on first use, so the object can be created before
    the tokenizer is loaded (as in an inference bundle).
    """

    def __init__(self, tokenizer, blank_index: int = 0, beam_size: int = 10,
                 lexicon: Optional[Union[str, Path, BundleFile]] = None,
                 lm: Optional[Union[str, Path, BundleFile]] = None, lm_weight: float = 0.5,
                 word_score: float = 0.0, beam_threshold: float = 25.0):
        if beam_size is None or int(beam_size) < 0:
            raise DecoderConfigError(f"beam_size must be >= 0 (0 = greedy), got {beam_size}")
        if int(beam_size) == 0 and (lexicon is not None or lm is not None):
            raise DecoderConfigError("a lexicon or an LM needs beam search: set beam_size >= 1")
        self.tokenizer = tokenizer
        self.blank_index = int(blank_index)
        self.beam_size = int(beam_size)
        self.lexicon = lexicon
        self.lm = lm
        self.lm_weight = float(lm_weight)
        self.word_score = float(word_score)
        self.beam_threshold = float(beam_threshold)
        self._search = None

    @property
    def is_greedy(self) -> bool:
        return self.beam_size == 0

    def config(self) -> dict:
        """The settings, as written into an inference bundle / shown to the user."""
        path = lambda p: None if p is None else str(Path(p))  # noqa: E731
        return {"beam_size": self.beam_size, "lexicon": path(self.lexicon), "lm_path": path(self.lm),
                "lm_weight": self.lm_weight, "word_score": self.word_score}

    def describe(self) -> str:
        """One line for logs: greedy, or beam N (+ lexicon, + LM)."""
        if self.is_greedy:
            return "greedy"
        extra = [f"lexicon {Path(self.lexicon).name}"] if self.lexicon is not None else []
        extra += [f"LM {Path(self.lm).name} (weight {self.lm_weight})"] if self.lm is not None else []
        return f"beam {self.beam_size}" + (" + " + ", ".join(extra) if extra else "")

    def _build(self):
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as err:
            raise DecoderConfigError(f"beam search needs the flashlight decoder: pip install flashlight-text "
                                     f"({err})") from err
        tokens = vocabulary(self.tokenizer)
        sil = WORD_BOUNDARY if WORD_BOUNDARY in tokens else tokens[self.blank_index]
        self._sil_id = tokens.index(sil)
        lexicon_file = None
        if self.lexicon is not None:
            entries = read_lexicon(self.lexicon, tokens)
            # flashlight reads "word tok tok" lines; rewrite to a private copy in that exact form
            self._lexicon_tmp = tempfile.NamedTemporaryFile("w", suffix=".lex", delete=False, encoding="utf-8")
            for word, spellings in entries.items():
                for pieces in spellings:
                    self._lexicon_tmp.write(f"{word} {' '.join(pieces)}\n")
            self._lexicon_tmp.close()
            lexicon_file = self._lexicon_tmp.name
        lm = None
        if self.lm is not None:
            if not Path(self.lm).is_file():
                raise DecoderConfigError(f"LM file {Path(self.lm)} does not exist (give a KenLM .arpa or .bin)")
            lm = str(Path(self.lm))
        try:
            return ctc_decoder(lexicon=lexicon_file, tokens=tokens, lm=lm, beam_size=self.beam_size,
                               beam_threshold=self.beam_threshold, lm_weight=self.lm_weight if lm else 0.0,
                               word_score=self.word_score, blank_token=tokens[self.blank_index],
                               sil_token=sil, unk_word="<unk>", log_add=True)
        except RuntimeError as err:  # e.g. KenLM cannot read the file
            raise DecoderConfigError(f"cannot build the beam-search decoder ({self.describe()}): {err}") from err

    def decode(self, log_probs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[list[str], list[list[int]]]:
        """(transcripts, token ids) of a batch of log-probabilities (B, T, V) with relative lengths (B,)."""
        sp = _sp(self.tokenizer)
        if self.is_greedy or self.lexicon is None:
            tokens = self.decode_tokens(log_probs, wav_lens)
            return [sp.decode_ids(t) for t in tokens], tokens
        # a lexicon search returns words (the silence between two words is optional in the search, so the
        # token path alone may not show the word boundary): tokens are the words' canonical tokenisation
        words = [" ".join(w) for w in self._search_batch(log_probs, wav_lens, words=True)]
        return words, [sp.encode_as_ids(w) if w else [] for w in words]

    def decode_tokens(self, log_probs: torch.Tensor, wav_lens: torch.Tensor) -> list[list[int]]:
        """Token ids of the best hypothesis per utterance (CTC-collapsed, no blanks; with a lexicon, the
        tokenisation of its words)."""
        wav_lens = wav_lens.to(log_probs.device).float()
        if self.is_greedy:
            return [[int(i) for i in h] for h in
                    sb.decoders.ctc_greedy_decode(log_probs, wav_lens, blank_id=self.blank_index)]
        if self.lexicon is not None:
            return self.decode(log_probs, wav_lens)[1]
        return self._search_batch(log_probs, wav_lens, words=False)

    def _search_batch(self, log_probs: torch.Tensor, wav_lens: torch.Tensor, words: bool) -> list[list]:
        """The flashlight search's best hypothesis per utterance: its words, or its token ids."""
        if self._search is None:
            self._search = self._build()
        emissions = log_probs.detach().float().cpu().contiguous()
        lengths = torch.round(wav_lens.float().cpu() * emissions.shape[1]).int().clamp(1, emissions.shape[1])
        out = []
        for hyps in self._search(emissions, lengths):
            if words:
                out.append(list(hyps[0].words) if hyps else [])
                continue
            ids = [int(i) for i in hyps[0].tokens if int(i) != self.blank_index] if hyps else []
            while ids and ids[-1] == self._sil_id:  # flashlight closes every hypothesis with a silence
                ids.pop()
            out.append(ids)
        return out

    def __call__(self, log_probs: torch.Tensor, wav_lens: torch.Tensor) -> list[list[int]]:
        return self.decode_tokens(log_probs, wav_lens)


def decode_tokens(log_probs: torch.Tensor, wav_lens: torch.Tensor, decoder: CTCDecoder) -> list[list[int]]:
    """``decoding_function`` of an inference bundle for SpeechBrain's ``EncoderASR`` (bound with ``!name:``):
    the token ids of the bundle's decoder, which EncoderASR turns into words with the tokenizer."""
    return decoder.decode_tokens(log_probs, wav_lens)


def decoder_settings(hparams: dict) -> dict:
    """The decoder keys of a recipe's hparams with :data:`DECODER_DEFAULTS` for those it does not set."""
    return {key: hparams.get(key, default) if hparams.get(key, default) != "null" else None
            for key, default in DECODER_DEFAULTS.items()}


def resolve_lexicon(hparams: dict, tokenizer, folder: Union[str, Path]) -> Optional[Path]:
    """The lexicon file a recipe decodes with: ``lexicon: auto`` writes ``<folder>/lexicon.txt`` from the
    words of ``train_csv``; a path is checked against the model's tokens; null means none."""
    lexicon = decoder_settings(hparams)["lexicon"]
    if lexicon is None or lexicon is False:
        return None
    blank = int(hparams.get("blank_index", 0))
    if str(lexicon) == "auto":
        return write_lexicon(words_of_transcripts([hparams["train_csv"]]), tokenizer,
                             Path(folder) / "lexicon.txt", blank)
    read_lexicon(lexicon, vocabulary(tokenizer))  # a clear error now rather than at the end of training
    return Path(lexicon)


def build_decoder(hparams: dict, tokenizer, folder: Union[str, Path]) -> CTCDecoder:
    """The recipe's beam-search decoder from its hparams (``beam_size``, ``lexicon``, ``lm_path``,
    ``lm_weight``, ``word_score``); ``folder`` receives a generated lexicon."""
    settings = decoder_settings(hparams)
    return CTCDecoder(tokenizer, blank_index=int(hparams.get("blank_index", 0)),
                      beam_size=int(settings["beam_size"] or 0),
                      lexicon=resolve_lexicon(hparams, tokenizer, folder) if settings["beam_size"] else None,
                      lm=settings["lm_path"] if settings["beam_size"] else None,
                      lm_weight=settings["lm_weight"], word_score=settings["word_score"])
