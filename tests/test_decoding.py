"""Beam search, lexicon and KenLM decoding (dld_brain.decoding) on synthetic CTC posteriors of a
character SentencePiece model over the ten digit words."""

import random

import pytest
import torch

pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text")

from dld_brain.decoding import (  # noqa: E402
    CTCDecoder,
    DecoderConfigError,
    WORD_BOUNDARY,
    read_lexicon,
    spell,
    vocabulary,
    write_lexicon,
)

DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    """A character SentencePiece model of digit strings (<unk> = id 0 = CTC blank, as in the recipes)."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sp")
    rng = random.Random(0)
    (folder / "text.txt").write_text("\n".join(" ".join(rng.choice(DIGITS) for _ in range(3)) for _ in range(200)))
    spm.SentencePieceTrainer.train(input=str(folder / "text.txt"), model_prefix=str(folder / "sp"),
                                   vocab_size=17, model_type="char", character_coverage=1.0, bos_id=-1,
                                   eos_id=-1, unk_id=0, minloglevel=2)
    return spm.SentencePieceProcessor(model_file=str(folder / "sp.model"))


@pytest.fixture(scope="module")
def lexicon(sp, tmp_path_factory):
    return write_lexicon(DIGITS, sp, tmp_path_factory.mktemp("lex") / "digits.lex")


def posteriors(sp, text: str, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Log-probabilities (1, T, V) that spell ``text`` (one frame per character, a blank after each), with
    Gaussian noise of std ``noise`` on the logits."""
    ids = []
    for char in WORD_BOUNDARY + text.replace(" ", WORD_BOUNDARY):
        ids += [sp.piece_to_id(char), 0]
    logits = torch.full((len(ids), sp.get_piece_size()), -6.0)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    logits += noise * torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
    return torch.log_softmax(logits, -1).unsqueeze(0)


def test_lexicon_file_written_and_read_with_model_tokens(sp, lexicon, tmp_path):
    entries = read_lexicon(lexicon, vocabulary(sp))
    assert sorted(entries) == sorted(DIGITS) and entries["THREE"] == [list("THREE")]
    assert spell("ONE", sp) == ["O", "N", "E"] and spell("QUICK", sp) is None  # Q is not in the vocabulary
    bad = tmp_path / "bad.lex"
    bad.write_text("ONE O N E\nTEN T E Q\n")
    with pytest.raises(DecoderConfigError, match=r"bad.lex:2: tokens \['Q'\]"):
        read_lexicon(bad, vocabulary(sp))
    with pytest.raises(DecoderConfigError, match="does not exist"):
        CTCDecoder(sp, lexicon=tmp_path / "missing.lex").decode_tokens(posteriors(sp, "ONE"), torch.ones(1))
    with pytest.raises(DecoderConfigError, match="needs beam search"):
        CTCDecoder(sp, beam_size=0, lexicon=lexicon)


def test_lexicon_search_never_emits_a_non_word(sp, lexicon):
    """Heavily noisy posteriors of random digit strings: the lexicon search outputs only digit words,
    where greedy and unconstrained beam search produce non-words on the same inputs."""
    lexical = CTCDecoder(sp, beam_size=10, lexicon=lexicon)
    greedy, beam = CTCDecoder(sp, beam_size=0), CTCDecoder(sp, beam_size=10)
    rng = random.Random(1)
    non_words = {"greedy": 0, "beam": 0}
    for seed in range(40):
        text = " ".join(rng.choice(DIGITS) for _ in range(3))
        log_probs = posteriors(sp, text, noise=3.0, seed=seed)
        words = lexical.decode(log_probs, torch.ones(1))[0][0].split()
        assert words and set(words) <= set(DIGITS), (text, words)
        for name, decoder in (("greedy", greedy), ("beam", beam)):
            non_words[name] += any(w not in DIGITS for w in decoder.decode(log_probs, torch.ones(1))[0][0].split())
    assert non_words["greedy"] > 0 and non_words["beam"] > 0  # the noise really does produce non-words


def test_lexicon_returns_the_word_where_greedy_gives_a_non_word(sp, lexicon):
    log_probs = posteriors(sp, "ONE TWE NINE")  # the last letter of TWO came out as E
    assert CTCDecoder(sp, beam_size=0).decode(log_probs, torch.ones(1))[0] == ["ONE TWE NINE"]
    words, tokens = CTCDecoder(sp, beam_size=10, lexicon=lexicon).decode(log_probs, torch.ones(1))
    assert words == ["ONE TWO NINE"] and sp.decode_ids(tokens[0]) == "ONE TWO NINE"


def test_lexicon_batch_with_padding_matches_one_by_one(sp, lexicon):
    decoder = CTCDecoder(sp, beam_size=10, lexicon=lexicon)
    a, b = posteriors(sp, "SEVEN EIGHT", noise=1.0), posteriors(sp, "SIX", noise=1.0, seed=3)
    batch = torch.cat([a, torch.nn.functional.pad(b, (0, 0, 0, a.shape[1] - b.shape[1]), value=-1.0)])
    lens = torch.tensor([1.0, b.shape[1] / a.shape[1]])
    assert decoder.decode(batch, lens)[0] == decoder.decode(a, torch.ones(1))[0] + decoder.decode(b, torch.ones(1))[0]


def bigram_arpa(path, pair: str):
    """A KenLM ARPA file in which ``pair`` (e.g. "ONE FIVE") is the only likely bigram."""
    unigrams = ["<s>", "</s>", "<unk>", *DIGITS]
    lines = ["\\data\\", f"ngram 1={len(unigrams)}", "ngram 2=2", "", "\\1-grams:"]
    lines += [f"{-99 if w == '<s>' else -1.0}\t{w}\t-0.5" for w in unigrams]
    lines += ["", "\\2-grams:", f"-0.05\t{pair}", "-0.05\t<s> ONE", "", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


def test_lexicon_with_kenlm_ngram_breaks_a_tie(sp, lexicon, tmp_path):
    """Posteriors split evenly between ONE FIVE and ONE NINE (F/N and V/N frames at 0.5 each): a bigram LM
    decides, each way."""
    log_probs = posteriors(sp, "ONE FIVE")
    frame = [t for t in range(log_probs.shape[1]) if log_probs[0, t].argmax() == sp.piece_to_id("F")][0]
    for t, letter in ((frame, "F"), (frame + 4, "V")):
        row = torch.full((sp.get_piece_size(),), -12.0)
        row[[sp.piece_to_id(letter), sp.piece_to_id("N")]] = torch.log(torch.tensor(0.5))
        log_probs[0, t] = row
    for pair in ("ONE FIVE", "ONE NINE"):
        lm = bigram_arpa(tmp_path / f"{pair.replace(' ', '_')}.arpa", pair)
        decoder = CTCDecoder(sp, beam_size=10, lexicon=lexicon, lm=lm, lm_weight=2.0)
        assert decoder.decode(log_probs, torch.ones(1))[0] == [pair]
    with pytest.raises(DecoderConfigError, match="does not exist"):
        CTCDecoder(sp, beam_size=10, lexicon=lexicon, lm=tmp_path / "nope.arpa").decode(log_probs, torch.ones(1))


def test_comparison_table_has_beam_columns_next_to_greedy(tmp_path):
    """A sweep with WER_beam adds '<method> beam' columns to comparison.md (the README's beam column)."""
    import pandas as pd

    from dld_brain.report import write_comparison

    paths = []
    for method, shift in (("teacher", 0.0), ("dld", 5.0)):
        paths.append(tmp_path / f"{method}.csv")
        pd.DataFrame({"method": method, "test_set": "test", "depth": [1, 2], "layers": ["1", "0 1"],
                      "WER": [50 + shift, 20 + shift], "WER_beam": [40 + shift, 10 + shift],
                      "encoder_params": [100, 200], "total_params": [300, 400]}).to_csv(paths[-1], index=False)
    text = write_comparison(paths, tmp_path / "out").read_text()
    assert "| test_set | depth | enc. params (M) | teacher | dld | teacher beam | dld beam |" in text
    assert "| test | 2 | 0.0 | 20.0 | 25.0 | 10.0 | 15.0 |" in text
