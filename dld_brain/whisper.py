"""Whisper compression with transformers models: teacher loading, students with fewer layers initialised
from chosen teacher layers, log-mel features, batched greedy decoding, and the shared text normaliser.

The teacher is any :class:`~transformers.WhisperForConditionalGeneration` (``openai/whisper-*`` from the hub,
a local folder, or a CTranslate2 folder converted on the fly by :mod:`dld_brain.whisper_convert`).
Decoding is one greedy loop (with key/value cache) used for teacher and student alike, so speed and WER
comparisons differ only in the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import speechbrain as sb
import torch

from dld_brain.askd import masked_kl, top1_agreement
from dld_brain.data.fsdd import DIGIT_WORDS
from dld_brain.data.text import normalize_transcript

SAMPLE_RATE = 16000


class WhisperSetupError(ValueError):
    """A Whisper teacher/student setting that cannot work; the message names the key."""


# ---------------------------------------------------------------------------- text
def normalize_digits_text(text: str) -> str:
    """The normaliser shared by teacher, student and references: :func:`normalize_transcript` (upper case,
    punctuation removed), then every digit spelt as its word (``"3, 71"`` -> ``"THREE SEVEN ONE"``) and
    ``OH`` read as ``ZERO``."""
    words = []
    for word in normalize_transcript(text).split():
        if word.isdigit():
            words += [DIGIT_WORDS[int(c)].upper() for c in word]
        else:
            words.append("ZERO" if word == "OH" else word)
    return " ".join(words)


# ---------------------------------------------------------------------------- models
def load_whisper(source: Union[str, Path], cache_dir: Union[str, Path]):
    """(model, tokenizer, decoding options) from a hub id / transformers folder, or a CTranslate2 Whisper
    folder (``model.bin``), converted once into ``cache_dir``. The model is in eval mode, float32."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    from dld_brain.whisper_convert import convert_ct2_whisper

    path = Path(str(source))
    if (path / "model.bin").is_file():
        path = convert_ct2_whisper(path, Path(cache_dir) / "converted")
    model = WhisperForConditionalGeneration.from_pretrained(str(path) if path.exists() else str(source))
    model.eval()
    if (path / "decoding.json").is_file():
        decoding = json.loads((path / "decoding.json").read_text())
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:  # a hub model: its generation config and tokenizer
        from transformers import WhisperTokenizerFast

        hf_tok = WhisperTokenizerFast.from_pretrained(str(source))
        gen = model.generation_config
        if model.config.vocab_size != 51864:
            raise WhisperSetupError("only English-only Whisper models (whisper-*.en) are supported as teacher")
        decoding = {"prompt": [gen.decoder_start_token_id, gen.no_timestamps_token_id], "eot": gen.eos_token_id,
                    "suppress_ids": list(gen.suppress_tokens or []),
                    "suppress_ids_begin": list(gen.begin_suppress_tokens or [])}
        tokenizer = hf_tok.backend_tokenizer
    return model, tokenizer, decoding


def make_student(teacher, decoder_layers: Optional[Sequence[int]] = None,
                 encoder_layers: Optional[Sequence[int]] = None):
    """A Whisper with the chosen teacher layers only (0-based; None = all), every weight copied from the
    teacher (embeddings, convolutions, norms, head). With all layers it computes the teacher's function."""
    from transformers import WhisperForConditionalGeneration

    cfg = teacher.config
    dec = list(range(cfg.decoder_layers)) if decoder_layers is None else [int(i) for i in decoder_layers]
    enc = list(range(cfg.encoder_layers)) if encoder_layers is None else [int(i) for i in encoder_layers]
    for key, layers, n in (("decoder_layers", dec, cfg.decoder_layers), ("encoder_layers", enc, cfg.encoder_layers)):
        if not layers or len(set(layers)) != len(layers) or not all(0 <= i < n for i in layers):
            raise WhisperSetupError(f"student {key} must be distinct teacher layer indices in 0..{n - 1}, got {layers}")
    config = cfg.__class__.from_dict({**cfg.to_dict(), "decoder_layers": len(dec), "encoder_layers": len(enc)})
    student = WhisperForConditionalGeneration(config)
    source = teacher.state_dict()
    mapped = {}
    for name in student.state_dict():
        match = re.match(r"(model\.(encoder|decoder)\.layers\.)(\d+)(\..*)", name)
        if match:
            chosen = enc if match.group(2) == "encoder" else dec
            name_t = f"{match.group(1)}{chosen[int(match.group(3))]}{match.group(4)}"
        else:
            name_t = name
        mapped[name] = source[name_t].clone()
    student.load_state_dict(mapped)
    student.generation_config = teacher.generation_config
    return student.eval()


# ---------------------------------------------------------------------------- features and decoding
_EXTRACTOR = None


def log_mel(waveforms: Sequence, num_mel_bins: int = 80) -> torch.Tensor:
    """Whisper log-mel features (B, mels, 3000) of 16 kHz waveforms (padded to 30 s, as Whisper expects)."""
    global _EXTRACTOR
    from transformers import WhisperFeatureExtractor

    if _EXTRACTOR is None or _EXTRACTOR.feature_size != num_mel_bins:
        _EXTRACTOR = WhisperFeatureExtractor(feature_size=num_mel_bins)
    arrays = [w.numpy() if isinstance(w, torch.Tensor) else w for w in waveforms]
    return _EXTRACTOR(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


@torch.no_grad()
def encode(model, features: torch.Tensor) -> torch.Tensor:
    """Encoder output (B, 1500, d_model)."""
    return model.model.encoder(features).last_hidden_state


def decoder_logits(model, tokens: torch.Tensor, encoder_out: torch.Tensor) -> torch.Tensor:
    """Teacher-forced decoder logits (B, L, vocab) for ``tokens`` given the encoder output."""
    hidden = model.model.decoder(input_ids=tokens, encoder_hidden_states=encoder_out).last_hidden_state
    return model.proj_out(hidden)


@torch.no_grad()
def greedy_decode(model, encoder_out: torch.Tensor, decoding: dict, max_new_tokens: int = 40,
                  stop_at_eot: bool = True) -> list[list[int]]:
    """Batched greedy decoding with key/value cache; suppressed tokens as in the model's config (and the
    begin-suppressed ones at the first step). Returns the generated ids per utterance, without the prompt
    and the end-of-text token. ``stop_at_eot=False`` runs exactly ``max_new_tokens`` steps (for timing the
    decoder per step independently of the output length)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    batch = encoder_out.shape[0]
    device = encoder_out.device
    prompt = torch.tensor(decoding["prompt"], dtype=torch.long, device=device).expand(batch, -1)
    eot = int(decoding["eot"])
    vocab = model.config.vocab_size
    suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
    suppress[[i for i in decoding["suppress_ids"] if 0 <= i < vocab]] = True
    begin = suppress.clone()
    begin[[i for i in decoding["suppress_ids_begin"] if 0 <= i < vocab]] = True
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    tokens, out = prompt, [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        result = model.model.decoder(input_ids=tokens, encoder_hidden_states=encoder_out, cache=cache,
                                     use_cache=True)  # the cache object is updated in place
        logits = model.proj_out(result.last_hidden_state[:, -1]).float()
        logits[:, begin if step == 0 else suppress] = -float("inf")
        next_ids = logits.argmax(-1)
        next_ids[done] = eot
        for i in range(batch):
            if not done[i] and next_ids[i] != eot:
                out[i].append(int(next_ids[i]))
        done |= next_ids == eot
        if done.all() and stop_at_eot:
            break
        tokens = next_ids[:, None]
    return out


def transcribe(model, tokenizer, decoding: dict, waveforms: Sequence, max_new_tokens: int = 40) -> list[str]:
    """Greedy transcripts of 16 kHz waveforms."""
    features = log_mel(waveforms, model.config.num_mel_bins)
    ids = greedy_decode(model, encode(model, features), decoding, max_new_tokens)
    return [tokenizer.decode(i, skip_special_tokens=True) for i in ids]


# ---------------------------------------------------------------------------- training (CE + ASKD)

class WhisperCompressionBrain(sb.Brain):
    """Trains a student Whisper decoder with ``CE + kd_weight * w_teacher * KL(teacher || student) +
    w_self * KL(EMA student || student)`` (ASKD, :mod:`dld_brain.askd`) on teacher-forced token positions.

    ``modules``: ``student`` (WhisperForConditionalGeneration; its encoder frozen and shared with the
    teacher, so batches carry precomputed encoder outputs ``enc``); ``hparams``: ``teacher`` (frozen),
    ``askd`` (optional), ``kd_weight``, ``kd_temperature``, ``epoch_counter``, ``train_logger``.
    Batches: ``enc`` (B, 1500, d), ``tokens`` (prompt + text + eot, padded) with relative lengths.
    """

    def on_fit_start(self):
        super().on_fit_start()
        askd = getattr(self.hparams, "askd", None)
        if askd is not None and askd.uses_self_kd and askd.ema is None:
            askd.attach(self.modules.student)

    def compute_forward(self, batch, stage):
        """Student logits, and in training the teacher's / EMA's on the same tokens (no gradient)."""
        batch = batch.to(self.device)
        enc, _ = batch.enc
        tokens, lens = batch.tokens
        logits = decoder_logits(self.modules.student, tokens[:, :-1], enc)
        teacher = self_target = None
        w = (1.0, 0.0)
        askd = getattr(self.hparams, "askd", None)
        if stage == sb.Stage.TRAIN:
            if askd is not None:
                w = askd.weights(self.hparams.epoch_counter.current)
            if self.hparams.kd_weight > 0 and w[0] > 0:
                with torch.no_grad():
                    teacher = decoder_logits(self.hparams.teacher, tokens[:, :-1], enc)
            if askd is not None and w[1] > 0:
                with askd.target_model(self.modules.student) as source:
                    self_target = decoder_logits(source, tokens[:, :-1], enc)
        return logits, teacher, self_target, w

    def compute_objectives(self, predictions, batch, stage):
        """Token cross-entropy on the text and end-of-text positions (+ the ASKD terms in training)."""
        logits, teacher, self_target, (w_teacher, w_self) = predictions
        tokens, lens = batch.tokens
        targets = tokens[:, 1:]
        n_prompt = int(self.hparams.prompt_length)
        abs_len = torch.round(lens * tokens.shape[1]).long()
        pos = torch.arange(targets.shape[1], device=targets.device)[None, :]
        mask = (pos >= n_prompt - 1) & (pos < abs_len[:, None] - 1)
        ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        loss = (ce * mask).sum() / mask.sum()
        askd = getattr(self.hparams, "askd", None)
        if teacher is not None:
            kd = masked_kl(logits, teacher, mask, float(self.hparams.kd_temperature))
            loss = loss + self.hparams.kd_weight * w_teacher * kd
            if askd is not None:
                askd.record(kd_loss=float(kd.detach()), agreement=top1_agreement(logits, teacher, mask))
        if self_target is not None:
            self_kd = masked_kl(logits, self_target, mask, askd.temperature)
            loss = loss + w_self * self_kd
            askd.record(self_kd_loss=float(self_kd.detach()))
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        askd = getattr(self.hparams, "askd", None)
        if should_step and askd is not None:
            askd.after_batch(self.modules.student)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the loss and (in training) the epoch's ASKD weights; the adaptive rule sees each epoch."""
        askd = getattr(self.hparams, "askd", None)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            if askd is not None:
                self.train_stats.update(askd.epoch_stats())
                askd.end_train_epoch()
        elif stage == sb.Stage.VALID:
            if askd is not None:
                askd.end_valid_epoch(stage_loss)
            self.hparams.train_logger.log_stats(stats_meta={"epoch": epoch}, train_stats=self.train_stats,
                                                valid_stats={"loss": stage_loss})
