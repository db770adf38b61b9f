"""Dynamic-depth Whisper: the three ways to an encoder that runs at any depth, on the same data and budget.

(a) ``static``: the pretrained model, encoder layers dropped at inference, no training;
(b) ``rdld``: fine-tuned with random encoder layer dropping (per-batch Bernoulli gates), cross-entropy only;
(c) ``dld``: the same plus ``kd_weight * KL(frozen full Whisper || student)`` on the decoder's token
    posteriors under teacher forcing (:func:`dld_brain.askd.masked_kl`).

The model is a ``WhisperForConditionalGeneration`` whose encoder is a
:class:`dld_brain.lobes.whisper_encoder.GatedWhisperEncoder`; the whole model trains (encoder and decoder).
Features are Whisper log-mels cropped to ``encoder_seconds`` (see :func:`crop_frames`), so training and
decoding do not pay for 30 s of padding when that option is on. Decoding is
:func:`dld_brain.whisper.greedy_decode`, WER uses :func:`dld_brain.whisper.normalize_digits_text`.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional, Sequence

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.metric_stats import ErrorRateStats

from dld_brain.lobes.whisper_encoder import GatedWhisperEncoder, crop_frames, make_gated_whisper
from dld_brain.whisper import WhisperCompressionBrain, WhisperSetupError, decoder_logits, greedy_decode, log_mel

METHODS = ("static", "rdld", "dld")


def gated_copy(model, drop_prob: float = 0.0, gate_seed: int = 0, depth_policy: str = "even",
               slice_positions: bool = False):
    """A deep copy of a stock Whisper with a gated encoder (the original is left untouched)."""
    copied = copy.deepcopy(model)
    make_gated_whisper(copied, drop_prob=drop_prob, gate_seed=gate_seed, depth_policy=depth_policy,
                       slice_positions=slice_positions)
    return copied


def target_length(tokenizer, texts: Sequence[str], style: str = "digits") -> int:
    """Mean number of generated tokens (text + end of text) of ``texts`` written in ``style``, rounded."""
    to_text = TARGET_STYLES[style]
    lengths = [len(tokenizer.encode(to_text(t), add_special_tokens=False).ids) + 1 for t in texts]
    return max(1, round(sum(lengths) / max(len(lengths), 1)))


def gated_encoder(model) -> GatedWhisperEncoder:
    """The gated encoder of a model built by :func:`gated_copy` (one-line error otherwise)."""
    encoder = model.model.encoder
    if not isinstance(encoder, GatedWhisperEncoder):
        raise WhisperSetupError("the model's encoder is not gated: build it with gated_copy / make_gated_whisper")
    return encoder


def features(waveforms: Sequence, seconds: Optional[float], num_mel_bins: int = 80, batch: int = 16) -> torch.Tensor:
    """Whisper log-mels (N, mels, frames) of 16 kHz waveforms, cropped to ``seconds`` (None: 30 s)."""
    chunks = [crop_frames(log_mel(waveforms[i:i + batch], num_mel_bins), seconds)
              for i in range(0, len(waveforms), batch)]
    return torch.cat(chunks)


def target_ids(tokenizer, decoding: dict, text: str) -> list[int]:
    """prompt + ``text`` tokens + end of text (``text`` already written as Whisper writes it)."""
    return [*decoding["prompt"], *tokenizer.encode(text, add_special_tokens=False).ids, decoding["eot"]]


def digits_as_whisper(words: str) -> str:
    """FSDD transcript -> the digits as Whisper writes them: ``"TWO EIGHT"`` -> ``" 2 8"``."""
    names = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()
    return " " + " ".join(str(names.index(w)) for w in words.split())


def sentence_as_whisper(words: str) -> str:
    """An upper-case transcript (LibriSpeech) -> sentence case with a leading space and a final period."""
    text = words.strip().lower()
    return " " + text[:1].upper() + text[1:] + "."


TARGET_STYLES: dict[str, Callable[[str], str]] = {"digits": digits_as_whisper, "sentence": sentence_as_whisper}


def make_dataset(feats: torch.Tensor, ids: Sequence[str], texts: Sequence[str], tokenizer, decoding: dict,
                 style: str = "digits") -> DynamicItemDataset:
    """A SpeechBrain dataset of precomputed (cropped) log-mels ``feats`` and target tokens."""
    if style not in TARGET_STYLES:
        raise WhisperSetupError(f"target_style must be one of {sorted(TARGET_STYLES)}, got {style!r}")
    to_text = TARGET_STYLES[style]
    data = {uid: {"index": i, "wrd": text} for i, (uid, text) in enumerate(zip(ids, texts))}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("index", "wrd")
    @sb.utils.data_pipeline.provides("feats", "tokens")
    def pipeline(index, wrd):
        yield feats[index].float()
        yield torch.tensor(target_ids(tokenizer, decoding, to_text(wrd)), dtype=torch.long)

    dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(["id", "feats", "tokens"])
    return dataset


class DynamicWhisperBrain(WhisperCompressionBrain):
    """Fine-tunes a gated Whisper (``modules.student``): CE on teacher-forced tokens, plus in training
    ``kd_weight * KL(teacher || student)`` when ``hparams.teacher`` is a model (DLD) and ``kd_weight > 0``.

    The encoder draws its Bernoulli gates per batch in training (``drop_prob``) and runs at full depth in
    validation. The teacher is frozen and its inputs are fixed, so its logits are computed once per
    utterance and kept (float16) instead of re-running the full model every epoch. An ``askd`` object may
    schedule the teacher weight; self-KD is not supported here (its target would need the full-depth path).
    Batches: ``feats`` (B, mels, frames), ``tokens`` (prompt + text + eot, padded).
    """

    def on_fit_start(self):
        super().on_fit_start()
        askd = getattr(self.hparams, "askd", None)
        if askd is not None and askd.uses_self_kd:
            raise WhisperSetupError("askd: self-KD is not supported by DynamicWhisperBrain; set askd.self_schedule "
                                    "to null (the teacher schedule works)")
        self._teacher_logits: dict[str, torch.Tensor] = {}

    def teacher_logits(self, batch, tokens: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's teacher-forced logits for the batch (computed once per utterance)."""
        missing = [i for i, uid in enumerate(batch.id) if uid not in self._teacher_logits]
        if missing:
            teacher = self.hparams.teacher
            with torch.no_grad():
                feats = batch.feats.data[missing]
                enc = teacher.model.encoder(feats).last_hidden_state
                out = decoder_logits(teacher, tokens[missing, :-1], enc)
            lengths = torch.round(batch.tokens.lengths[missing] * tokens.shape[1]).long() - 1
            for j, i in enumerate(missing):
                self._teacher_logits[batch.id[i]] = out[j, : int(lengths[j])].half().cpu()
        rows = [self._teacher_logits[uid] for uid in batch.id]
        padded = torch.zeros(len(rows), tokens.shape[1] - 1, rows[0].shape[-1])
        for i, row in enumerate(rows):
            padded[i, : row.shape[0]] = row.float()
        return padded.to(tokens.device)

    def compute_forward(self, batch, stage):
        """Student logits through the gated encoder (and in training the cached teacher logits)."""
        batch = batch.to(self.device)
        feats, _ = batch.feats
        tokens, _ = batch.tokens
        enc = self.modules.student.model.encoder(feats).last_hidden_state
        logits = decoder_logits(self.modules.student, tokens[:, :-1], enc)
        teacher = None
        w = (1.0, 0.0)
        askd = getattr(self.hparams, "askd", None)
        if stage == sb.Stage.TRAIN:
            if askd is not None:
                w = askd.weights(self.hparams.epoch_counter.current)
            if getattr(self.hparams, "teacher", None) is not None and self.hparams.kd_weight > 0 and w[0] > 0:
                teacher = self.teacher_logits(batch, tokens)
        return logits, teacher, None, w


def evaluate_depths(model, feats: torch.Tensor, ids: Sequence[str], refs: Sequence[str], tokenizer, decoding: dict,
                    depths: Sequence[int], normalize: Callable[[str], str], max_new_tokens: int = 24,
                    batch: int = 16, policy: Optional[str] = None) -> dict[int, dict]:
    """Greedy WER of a gated Whisper at each encoder depth: ``{depth: {"wer", "words", "layers", "lines"}}``
    (``lines``: one ``ID, ref, hyp, raw`` line per utterance). References and hypotheses share ``normalize``."""
    encoder = gated_encoder(model)
    model.eval()
    results = {}
    for depth in depths:
        stats = ErrorRateStats()
        lines = []
        with encoder.at_depth(depth, policy=policy) as layers, torch.no_grad():
            for i in range(0, len(ids), batch):
                enc = encoder(feats[i:i + batch].float().to(encoder.device)).last_hidden_state
                for j, hyp_ids in enumerate(greedy_decode(model, enc, decoding, max_new_tokens)):
                    raw = tokenizer.decode(hyp_ids, skip_special_tokens=True)
                    hyp, ref = normalize(raw), normalize(refs[i + j])
                    stats.append([ids[i + j]], [hyp.split()], [ref.split()])
                    lines.append(f"{ids[i + j]}\tref={ref}\thyp={hyp}\traw={raw!r}")
        results[int(depth)] = {"wer": float(stats.summarize("error_rate")),
                               "words": int(stats.summarize("num_scored_tokens")), "layers": layers, "lines": lines}
    return results


def latency_per_depth(model, waveforms: Sequence, decoding: dict, depths: Sequence[int],
                      seconds: Optional[float], max_new_tokens: int = 24, repeats: int = 3,
                      fixed_tokens: Optional[int] = None) -> dict[int, float]:
    """Median end-to-end seconds (log-mel + crop + gated encoder + greedy decoding) of one batch of
    ``waveforms`` at each depth; depths are interleaved per repeat (round-robin) after a warm-up.

    Decoding runs to end of text (at most ``max_new_tokens``), or exactly ``fixed_tokens`` steps when given:
    then the time depends on the architecture only, not on how long the model's (possibly wrong) output is,
    so depths and models compare at the same output length."""
    encoder = gated_encoder(model)
    model.eval()
    steps, stop = (int(fixed_tokens), False) if fixed_tokens else (int(max_new_tokens), True)

    def once(depth):
        start = time.perf_counter()
        with encoder.at_depth(depth), torch.no_grad():
            feats = crop_frames(log_mel(waveforms, model.config.num_mel_bins), seconds).to(encoder.device)
            greedy_decode(model, encoder(feats).last_hidden_state, decoding, steps, stop_at_eot=stop)
        return time.perf_counter() - start

    once(max(depths))
    times = {int(d): [] for d in depths}
    for _ in range(int(repeats)):
        for depth in depths:
            times[int(depth)].append(once(depth))
    return {d: statistics.median(t) for d, t in times.items()}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, Optional[float]]:
    """(mean, half-width of the t-interval); the half-width is None for fewer than 2 values."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    from scipy import stats

    sem = statistics.stdev(values) / len(values) ** 0.5
    return mean, float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)


def paired_seed_differences(wer: dict, a: str = "dld", b: str = "rdld", confidence: float = 0.95) -> list[dict]:
    """Per depth, ``a - b`` WER (points) paired by seed (the recipe appends one value per seed, in seed order):
    ``depth, seeds, diff, half`` (t half-width, None under 2 seeds) and ``p`` (paired t-test, None likewise)."""
    if a not in wer or b not in wer:
        return []
    rows = []
    for depth in wer[a]:
        pairs = list(zip(wer[a][depth], wer[b].get(depth, [])))
        if not pairs:
            continue
        diffs = [x - y for x, y in pairs]
        mean, half = mean_interval(diffs, confidence)
        p_value = None
        if len(diffs) >= 2:
            from scipy import stats

            if statistics.pstdev(diffs) < 1e-9:  # identical differences: t is 0 (no difference) or infinite
                p_value = 1.0 if abs(mean) < 1e-9 else 0.0
            else:
                p_value = float(stats.ttest_1samp(diffs, 0.0).pvalue)
        rows.append({"depth": int(depth), "seeds": len(diffs), "diff": mean, "half": half, "p": p_value})
    return rows


def plot_wer_per_depth(wer: dict, path, speedups: Optional[dict] = None, title: str = "",
                       speedup_label: str = "end-to-end speed-up vs full depth") -> None:
    """WER (%) per encoder depth, one line per method: mean over seeds with 95 % t-interval error bars;
    ``speedups`` ({depth: end-to-end speed-up}, described by ``speedup_label``) labels the x ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per_depth in wer.items():
        depths = sorted(int(d) for d in per_depth)
        stats_ = [mean_interval(per_depth[str(d)]) for d in depths]
        ax.errorbar(depths, [m for m, _ in stats_], yerr=[h or 0.0 for _, h in stats_], marker="o", capsize=3,
                    label=f"{method} (seeds: {max(len(per_depth[str(d)]) for d in depths)})")
    depths = sorted({int(d) for per_depth in wer.values() for d in per_depth})
    ax.set_xticks(depths)
    if speedups:
        ax.set_xticklabels([f"{d}\n{speedups[str(d)]:.2f}x" if str(d) in speedups else str(d) for d in depths])
        ax.set_xlabel(f"encoder layers kept ({speedup_label})")
    else:
        ax.set_xlabel("encoder layers kept")
    ax.set_ylabel("WER (%), mean and 95 % CI over seeds")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "dynamic-depth Whisper")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(results_json, out_png, latency_json=None, seconds: float = 8.0, title: str = "") -> None:
    """``wer_per_depth.png`` from a recipe's ``results.json``; x ticks carry the end-to-end speed-up over the
    stock model (30 s, full depth) from ``latency_json`` (another run's ``results.json``, e.g. a quiet-machine
    latency run; default: the same file) at ``seconds`` of encoder input."""
    import json
    from pathlib import Path

    results = json.loads(Path(results_json).read_text())
    latency = json.loads(Path(latency_json or results_json).read_text()).get("latency", {})
    times = latency.get(str(float(seconds)), {})
    full = max((int(d) for d in latency.get("30.0", {})), default=None)
    stock = latency["30.0"][str(full)] if full is not None else None
    speedups = {d: stock / t for d, t in times.items()} if stock and times else None
    plot_wer_per_depth(results["wer"], out_png, speedups, title,
                       f"end-to-end speed-up vs the stock model, {seconds:g} s input")


if __name__ == "__main__":  # python -m dld_brain.whisper_dynamic RESULTS.json OUT.png [LATENCY.json]
    import sys

    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python -m dld_brain.whisper_dynamic RESULTS.json OUT.png [LATENCY_RESULTS.json]")
    replot(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None,
           title="Whisper tiny.en, FSDD fold 0 (seeded sample)")
