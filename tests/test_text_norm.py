"""Text normalisation: TED-LIUM stm text -> LibriSpeech-style transcripts, and the generic rule used on
references and hypotheses before WER scoring."""

import pytest

from dld_brain.data.tedlium import parse_stm
from dld_brain.data.text import normalize_tedlium, normalize_transcript

TEDLIUM_CASES = [
    # contractions are split into tokens in TED-LIUM and joined back
    ("i 'm going to tell you what we 've learned", "I'M GOING TO TELL YOU WHAT WE'VE LEARNED"),
    ("it 's <unk> really {NOISE} don 't", "IT'S REALLY DON'T"),
    ("they 'll say you 'd better not and we 're done", "THEY'LL SAY YOU'D BETTER NOT AND WE'RE DONE"),
    ("you do n't", "YOU DON'T"),
    ("IT 'S", "IT'S"),
    # <unk>, fillers, events and pronunciation variants are removed
    ("so the(2) people [laughter] said", "SO THE PEOPLE SAID"),
    ("<sil> well {BREATH} <unk> okay", "WELL OKAY"),
    ("thank you very much (SomeSpeaker_2009-0042)", "THANK YOU VERY MUCH"),
    # words that start with an apostrophe are words, not clitics; a lone apostrophe is dropped
    ("'cause we 'd play rock ' n ' roll", "'CAUSE WE'D PLAY ROCK N ROLL"),
    ("it's already joined", "IT'S ALREADY JOINED"),
    ("we got 5 % of it , right ?", "WE GOT 5 OF IT RIGHT"),
    # nothing scorable left
    ("<unk>", ""),
    ("{NOISE} [laughter] <unk>", ""),
    ("ignore_time_segment_in_scoring", ""),
    ("", ""),
    ("   ", ""),
]


@pytest.mark.parametrize("raw, expected", TEDLIUM_CASES)
def test_normalize_tedlium(raw, expected):
    assert normalize_tedlium(raw) == expected
    assert normalize_transcript(expected) == expected  # hypotheses scored with the generic rule match


def test_normalize_tedlium_on_real_format_stm_lines(tmp_path):
    stm = tmp_path / "SomeSpeaker_2009.stm"
    stm.write_text(
        ';; LABEL "o" "Overall" "Overall results"\n'
        "SomeSpeaker_2009 1 SomeSpeaker_2009 12.51 19.27 <o,f0,female> and it 's <unk> that we don 't see\n"
        "SomeSpeaker_2009 1 inter_segment_gap 19.27 20.03 <o,,unknown> ignore_time_segment_in_scoring\n"
        "SomeSpeaker_2009 1 SomeSpeaker_2009 20.03 23.40 <F0_M> so(2) [laughter] that 's it\n"
        "SomeSpeaker_2009 1 SomeSpeaker_2009 23.40 24.00 <NA>\n"
        "\n")
    segments = list(parse_stm(stm))
    assert [(s.line, s.speaker, s.start, s.end, s.label) for s in segments] == [
        (2, "SomeSpeaker_2009", 12.51, 19.27, "<o,f0,female>"),
        (3, "inter_segment_gap", 19.27, 20.03, "<o,,unknown>"),
        (4, "SomeSpeaker_2009", 20.03, 23.40, "<F0_M>"), (5, "SomeSpeaker_2009", 23.40, 24.00, "<NA>")]
    assert [normalize_tedlium(s.text) for s in segments] == [
        "AND IT'S THAT WE DON'T SEE", "", "SO THAT'S IT", ""]


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "HELLO WORLD"),
    ("  it's   'quoted'  ", "IT'S QUOTED"),
    ("Mr. Smith's 2 dogs; twenty-one cats.", "MR SMITH'S 2 DOGS TWENTY ONE CATS"),
    ("caf\u00e9 na\u00efve", "CAFE NAIVE"),
    ("don\u2019t", "DON'T"),
    ("'TIS O'ER THE STUDENTS' HALL", "'TIS O'ER THE STUDENTS' HALL"),  # word-internal/edge apostrophes stay
    ("' '' '''", ""),
    ("\tTabs\nand  newlines ", "TABS AND NEWLINES"),
    ("", ""),
])
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected
    assert normalize_transcript(expected) == expected  # idempotent


def test_librispeech_transcripts_are_unchanged():
    for line in ("THE QUICK BROWN FOX'S DEN WAS EMPTY", "I'LL TELL 'EM AND THEY'D KNOW", "A"):
        assert normalize_transcript(line) == line
