"""Brains for dynamic-depth CTC models: static teacher, RDsc, RDLD and DLD from one class.

The method is chosen by hyperparameters, not code:

=========  ============  ==================  =================  ==========
method     ``drop_prob``  ``teacher_checkpoint``  ``init_from_teacher``  ``kd_weight``
=========  ============  ==================  =================  ==========
static     0              -                   -                  0
RDsc       0.5            -                   -                  0
RDLD       0.5            teacher run         True               0
DLD        0.5            teacher run         True               > 0
=========  ============  ==================  =================  ==========

DLD's objective is ``CTC(student) + kd_weight * KL(teacher || student)`` on frame-level CTC posteriors of a
frozen teacher (see :mod:`dld_brain.losses`). With an ``askd`` object in the hparams (:mod:`dld_brain.askd`)
the teacher term follows its curriculum (``kd_weight * w_teacher(t) * adaptive factor``) and a self-KD term
``w_self(t) * KL(self || student)`` is added, its targets from the student's full-depth path or EMA copy.
The teacher lives outside ``self.modules``: SpeechBrain never puts it back in train mode, never checkpoints
it and never wraps it in DDP.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Optional, Sequence

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ErrorRateStats

from dld_brain.askd import AgreementRule, top1_agreement
from dld_brain.augment import apply_augment, replicate_labels
from dld_brain.checkpointing import NonFiniteCounter, RandomState
from dld_brain.faults import maybe_kill, nan_loss
from dld_brain.losses import ctc_posterior_kl, valid_frame_mask
from dld_brain.teacher import PRETRAINED_TEACHER, load_teacher, teacher_from_student

logger = get_logger(__name__)  # SpeechBrain's: logs on the main process only


class NonFiniteLossError(RuntimeError):
    """The loss stayed non-finite past the patience; the message says what to try."""


class EvaluationError(RuntimeError):
    """Nothing suitable to evaluate (no checkpoint, or not the asked epoch); the message says what exists."""


class MethodConfigError(ValueError):
    """Inconsistent method hyperparameters (e.g. KD without a teacher); the message names the keys."""


#: Values of ``kd_teacher_input``: which features the KD targets are computed from (see
#: :meth:`DynamicDepthCTCBrain.compute_student_teacher_features`).
KD_TEACHER_INPUTS = ("augmented", "clean")


def check_method_config(hparams: dict) -> None:
    """Reject hyperparameter combinations that would silently train something else than intended."""
    kd = float(hparams.get("kd_weight", 0.0) or 0.0)
    teacher = hparams.get("teacher_checkpoint")
    if kd < 0:
        raise MethodConfigError(f"kd_weight must be >= 0, got {kd}")
    if kd > 0 and not teacher:
        raise MethodConfigError("kd_weight > 0 (DLD) needs teacher_checkpoint: the teacher run's output folder")
    if hparams.get("init_from_teacher") and not teacher:
        raise MethodConfigError("init_from_teacher: True needs teacher_checkpoint: the teacher run's output folder")
    source = hparams.get("kd_teacher_input", "augmented")
    if source not in KD_TEACHER_INPUTS:
        raise MethodConfigError(f"kd_teacher_input must be one of {', '.join(KD_TEACHER_INPUTS)}, got {source!r}")


class DynamicDepthCTCBrain(sb.Brain):
    """CTC training with gated layer dropping and optional distillation from a frozen teacher.

    Expects in ``modules``: ``model`` (e.g. :class:`dld_brain.lobes.ConformerCTC`) and ``normalize``
    (feature normalisation); in ``hparams``: ``compute_features``, ``ctc_cost``, ``blank_index``,
    ``epoch_counter``, ``train_logger``, ``tokenizer``; optional ``wav_augment``, ``spec_augment`` (SpeechBrain Augmenters, modules or lists:
    see :mod:`dld_brain.augment`),
    ``lr_annealing``, ``valid_depths``, ``kd_weight``, ``kd_temperature``, ``kd_normalisation``,
    ``teacher_checkpoint``, ``init_from_teacher``, ``askd`` (:class:`dld_brain.askd.ASKD`).
    """

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None):
        check_method_config(hparams or {})
        encoder = modules["model"].encoder
        self.nonfinite = NonFiniteCounter()
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        if encoder.drop_prob > 0:
            # Skipped layers leave parameters without gradient in a step; DDP must be told (DDP wraps the
            # modules later, in on_fit_start).
            self.find_unused_parameters = True
        self.teacher: Optional[dict] = None
        self.teacher_ckpt: Optional[Path] = None
        self.kd_weight = float(self.hparams_get("kd_weight", 0.0) or 0.0)
        self.wer_file: Optional[Path] = None
        self.test_stats: dict = {}
        #: a dld_brain.decoding.CTCDecoder: at test, also scored (``WER_beam``, ``<wer_file>`` with ``_beam``)
        self.beam_decoder = None
        if self.hparams_get("teacher_checkpoint") and not self.hparams_get("skip_training", False):
            self._setup_teacher(self.hparams_get("teacher_checkpoint"))
        self.askd = self.hparams_get("askd")
        self._askd_w = (1.0, 0.0)
        if self.askd is not None:
            self.askd.attach(self.model)  # after init_from_teacher: the EMA copy starts from the student
            if self.askd.ema is not None:
                self.askd.ema.to(self.device)
            if self.checkpointer is not None and "askd" not in self.checkpointer.recoverables:
                self.checkpointer.add_recoverable("askd", self.askd)
        if self.checkpointer is not None:
            # Exact resumption: the gate sequence and the global RNGs continue where they stopped.
            for name, obj in (("gate_sampler", encoder.gate_sampler), ("random_state", RandomState()),
                              ("nonfinite", self.nonfinite)):
                if name not in self.checkpointer.recoverables:
                    self.checkpointer.add_recoverable(name, obj)

    @property
    def nonfinite_count(self) -> int:
        """Steps skipped for a non-finite loss in the current epoch (what ``--nonfinite_patience`` bounds),
        kept in :class:`~dld_brain.checkpointing.NonFiniteCounter` (checkpointed; ``.total`` is the run's)."""
        return self.nonfinite.epoch

    @nonfinite_count.setter
    def nonfinite_count(self, value: int) -> None:
        # SpeechBrain sets 0 at each epoch start; a run resumed mid-epoch (step > 0) keeps its checkpoint's count
        if value == 0 and getattr(self, "step", 0) > 0:
            return
        self.nonfinite.epoch = int(value)

    @property
    def model(self) -> torch.nn.Module:
        """The acoustic model without its DDP wrapper (for depth control and parameter access)."""
        model = self.modules.model
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def hparams_get(self, key, default=None):
        """A hyperparameter or ``default`` when the YAML does not define it."""
        return getattr(self.hparams, key, default)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's, plus: a training sampler we built (e.g. the duration-bucketing
        ``DynamicBatchSampler`` of ``dynamic_batching: True``) becomes ``self.train_sampler`` when SpeechBrain
        left it unset (one process; under DDP it is SpeechBrain's wrapper around ours). SpeechBrain calls
        ``set_epoch(epoch)`` only on ``train_sampler``: without this every epoch saw the same batches. With
        it each epoch gets a new batch order that depends only on (seed, epoch), so a run resumed mid-epoch
        skips into exactly the batches the uninterrupted run saw."""
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN and self.train_sampler is None:
            sampler = loader_kwargs.get("batch_sampler") or loader_kwargs.get("sampler")
            if hasattr(sampler, "set_epoch"):
                self.train_sampler = sampler
        return loader

    # ----------------------------------------------------------------- teacher
    def _setup_teacher(self, checkpoint) -> None:
        """Load the frozen teacher; initialise the student from it when asked (before any resume)."""
        student = {"model": self.modules.model, "normalize": self.modules.normalize}
        if str(checkpoint) == PRETRAINED_TEACHER:  # the student as built (pretrained weights), frozen
            self.teacher = teacher_from_student(student, self.device) if self.kd_weight > 0 else None
            self.modules.normalize.update_until_epoch = 0
            return
        teacher, self.teacher_ckpt = load_teacher(student, checkpoint)
        for module in teacher.values():
            module.to(self.device)
        if self.hparams_get("init_from_teacher", False):
            self.modules.model.load_state_dict(teacher["model"].state_dict())
            get_default_hook(self.modules.normalize, DEFAULT_LOAD_HOOKS)(
                self.modules.normalize, self.teacher_ckpt / "normalize.ckpt", False)
            # Keep the teacher's statistics: student and teacher then see identical features.
            self.modules.normalize.update_until_epoch = 0
            logger.info("Student initialised from teacher %s", self.teacher_ckpt)
        if self.kd_weight > 0:
            self.teacher = teacher

    # ----------------------------------------------------------------- forward / loss
    def compute_features(self, batch, stage):
        """Waveforms -> normalised (and in training, augmented) filterbanks; returns (feats, wav_lens)."""
        feats, _, wav_lens = self.compute_student_teacher_features(batch, stage)
        return feats, wav_lens

    def compute_student_teacher_features(self, batch, stage):
        """(student feats, KD-target feats, wav_lens) from one feature pass.

        The student's features are the normalised filterbanks of the waveform, in training after
        ``wav_augment`` (on the waveform) and ``spec_augment`` (masks on the features). The features the
        KD targets (the teacher's, and ASKD's self-KD targets) are computed from follow ``kd_teacher_input``:

        - ``augmented`` (default): exactly the student's features, masks included;
        - ``clean``: the same features *before* ``spec_augment``, i.e. without the SpecAugment masks. The
          waveform augmentation is kept: it is applied once, before the features, and the teacher sees the
          same (e.g. speed-perturbed) utterance as the student, so that its frames stay aligned with the
          student's frames, which the frame-level CTC KL needs. "Clean" therefore means "unmasked", not
          "un-perturbed"; no second data load and no second filterbank or normalisation pass (which would
          also update the normaliser's running statistics twice) is made, only a copy of the features
          taken before the masks (SpeechBrain's masks write in place).

        Models without SpecAugment on features (the WavLM recipes: ``spec_augment: []``, WavLM masks its latent
        frames inside the student's forward, and the frozen teacher runs in eval mode, unmasked) get the same
        targets either way. Outside training, or when no KD target is computed, both are the same tensor.
        """
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN:  # an Augmenter may replicate the batch: see replicate_labels
            wavs, wav_lens = apply_augment(self.hparams_get("wav_augment"), wavs, wav_lens)
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens, epoch=self.hparams.epoch_counter.current)
        clean = None
        if stage == sb.Stage.TRAIN:
            augments = self.hparams_get("spec_augment")
            if augments and self.kd_teacher_input == "clean" and self.computes_kd_targets():
                clean = feats.clone()
            feats, wav_lens = apply_augment(augments, feats, wav_lens)
            if clean is not None and clean.shape[0] != feats.shape[0]:  # an Augmenter replicated the batch
                clean = replicate_labels((augments,), clean)
        return feats, feats if clean is None else clean, wav_lens

    @property
    def kd_teacher_input(self) -> str:
        """``augmented`` or ``clean``: the features KD targets are computed from (see
        :meth:`compute_student_teacher_features`)."""
        return self.hparams_get("kd_teacher_input", "augmented") or "augmented"

    def computes_kd_targets(self) -> bool:
        """Whether training steps run the teacher or the ASKD self-KD source (which need their input)."""
        return self.teacher is not None or self.askd is not None

    def replicate_labels(self, labels: torch.Tensor, stage) -> torch.Tensor:
        """Labels of a training batch replicated as its Augmenters replicated the audio (SpeechBrain's
        ``wav_augment.replicate_labels``); unchanged outside training."""
        if stage != sb.Stage.TRAIN:
            return labels
        return replicate_labels((self.hparams_get("wav_augment"), self.hparams_get("spec_augment")), labels)

    def compute_forward(self, batch, stage):
        """Student CTC log-posteriors, and in DLD training the frozen teacher's (on the student's features, or
        with ``kd_teacher_input: clean`` on them before SpecAugment), with ASKD also the self-KD targets, as a
        4th element."""
        batch = batch.to(self.device)
        feats, target_feats, wav_lens = self.compute_student_teacher_features(batch, stage)
        log_probs = self.modules.model(feats, wav_lens)
        teacher_log_probs, self_log_probs = self.distillation_targets(target_feats, wav_lens, stage)
        if self.askd is None:
            return log_probs, wav_lens, teacher_log_probs
        return log_probs, wav_lens, teacher_log_probs, self_log_probs

    def distillation_targets(self, feats, wav_lens, stage):
        """(teacher, self-KD) output on ``feats`` (the KD-target features of
        :meth:`compute_student_teacher_features`) for this training batch, None when unused; both without
        gradient. Sets the batch's ASKD weights (teacher multiplier, self weight) in ``self._askd_w``."""
        if stage != sb.Stage.TRAIN:
            return None, None
        teacher_out = self_out = None
        need_teacher = self.teacher is not None
        if self.askd is not None:
            epoch = self.hparams.epoch_counter.current
            self._askd_w = self.askd.weights(epoch)
            raw_teacher = self.askd.teacher_schedule.at(epoch, self.askd.step)
            # The teacher forward is skipped once its weight is 0 (kept for the agreement rule's measurement).
            need_teacher = need_teacher and (self._askd_w[0] > 0 or (
                isinstance(self.askd.adaptive, AgreementRule) and raw_teacher > 0))
        if need_teacher:
            with torch.no_grad():
                teacher_out = self.teacher["model"](feats, wav_lens)
        if self.askd is not None and self._askd_w[1] > 0:
            with self.askd.target_model(self.model) as source:
                encoder = getattr(source, "encoder", None)
                if getattr(encoder, "num_layers", None) is not None:  # gated: the full-depth path
                    self_out = source(feats, wav_lens, layers=list(range(encoder.num_layers)))
                else:
                    self_out = source(feats, wav_lens)
        return teacher_out, self_out

    def compute_objectives(self, predictions, batch, stage):
        """CTC (+ kd_weight * KL to the teacher in DLD training, + the ASKD terms when configured); WER
        bookkeeping outside training."""
        log_probs, wav_lens, teacher_log_probs, *rest = predictions
        self_log_probs = rest[0] if rest else None
        tokens, tokens_lens = batch.tokens
        tokens, tokens_lens = self.replicate_labels(tokens, stage), self.replicate_labels(tokens_lens, stage)
        loss = self.hparams.ctc_cost(log_probs, tokens, wav_lens, tokens_lens)
        self._loss_parts["ctc"] += float(loss.detach())
        if teacher_log_probs is not None:
            loss_kd = ctc_posterior_kl(
                log_probs, teacher_log_probs, wav_lens,
                temperature=float(self.hparams_get("kd_temperature", 1.0)),
                normalisation=self.hparams_get("kd_normalisation", "frames"),
            )
            loss = self.add_teacher_term(loss, loss_kd, lambda: top1_agreement(
                log_probs, teacher_log_probs, valid_frame_mask(wav_lens, log_probs.shape[1])))
        if self_log_probs is not None:
            loss = self.add_self_term(loss, ctc_posterior_kl(
                log_probs, self_log_probs, wav_lens, temperature=self.askd.temperature,
                normalisation=self.hparams_get("kd_normalisation", "frames")))
        self._loss_parts["batches"] += 1
        if stage == sb.Stage.TRAIN and nan_loss(self.step):
            loss = loss * float("nan")  # fault injection (tests only; see dld_brain.faults)
        if stage != sb.Stage.TRAIN:
            hyps = sb.decoders.ctc_greedy_decode(log_probs, wav_lens, blank_id=self.hparams.blank_index)
            words = [self.tokenizer_decode(h).split() for h in hyps]
            targets = [w.split() for w in batch.wrd]
            self.wer_metrics[self._metric_key].append(batch.id, words, targets)
            if stage == sb.Stage.TEST and self.beam_decoder is not None:
                beam_words = [w.split() for w in self.beam_decoder.decode(log_probs, wav_lens)[0]]
                self.wer_metrics["beam"].append(batch.id, beam_words, targets)
        return loss

    def add_teacher_term(self, loss: torch.Tensor, loss_kd: torch.Tensor, agreement) -> torch.Tensor:
        """``loss + kd_weight * loss_kd`` (times the ASKD teacher weight when configured; the ASKD rule then
        records ``agreement()``, the batch's teacher/student top-1 agreement); shared by every Brain."""
        self._loss_parts["kd"] += float(loss_kd.detach())
        if self.askd is None:
            return loss + self.kd_weight * loss_kd
        self.askd.record(agreement=agreement())
        return loss + self.kd_weight * self._askd_w[0] * loss_kd

    def add_self_term(self, loss: torch.Tensor, loss_self: torch.Tensor) -> torch.Tensor:
        """``loss + w_self * loss_self``, the ASKD self-distillation term (recorded for the epoch log)."""
        self.askd.record(self_kd_loss=float(loss_self.detach()))
        return loss + self._askd_w[1] * loss_self

    def tokenizer_decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text with the recipe's SentencePiece model."""
        tok = self.hparams.tokenizer
        sp = tok.sp if hasattr(tok, "sp") else tok
        return sp.decode_ids([int(i) for i in ids])

    # ----------------------------------------------------------------- stages
    def valid_depths(self) -> list:
        """Depths validated each epoch (None = full depth, "all" = 1..N); the checkpoint metric is their
        mean WER."""
        depths = self.hparams_get("valid_depths")
        if depths == "all":
            return list(range(1, self.model.encoder.num_layers + 1))
        return list(depths) if depths else [None]

    def evaluate_batch(self, batch, stage):
        """Validation runs every depth in ``valid_depths``; test runs the depth set on the encoder."""
        if stage != sb.Stage.VALID:
            self._metric_key = None
            return super().evaluate_batch(batch, stage)
        encoder = self.model.encoder
        losses = []
        for depth in self.valid_depths():
            self._metric_key = depth
            with encoder.at_depth(depth):
                losses.append(super().evaluate_batch(batch, stage))
        return sum(losses) / len(losses)

    def evaluate(self, test_set, *args, **kwargs):
        """SpeechBrain's evaluate; the test rows whose audio cannot be read (``test_set.unreadable_refs``,
        see :func:`dld_brain.dataio.make_asr_datasets`) are scored as empty hypotheses, so every reference
        is in the WER."""
        self._unreadable_refs = list(getattr(test_set, "unreadable_refs", ()))
        try:
            return super().evaluate(test_set, *args, **kwargs)
        finally:
            self._unreadable_refs = []

    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics; the teacher is (re)asserted frozen at every stage."""
        self._loss_parts = {"ctc": 0.0, "kd": 0.0, "batches": 0}
        self._metric_key = None
        self._stage_start, self._stage_cpu = time.time(), time.process_time()
        if stage == sb.Stage.VALID:
            self.wer_metrics = {d: ErrorRateStats() for d in self.valid_depths()}
        elif stage == sb.Stage.TEST:
            self.wer_metrics = {None: ErrorRateStats()}
            if self.beam_decoder is not None:
                self.wer_metrics["beam"] = ErrorRateStats()
        if self.teacher is not None:
            for module in self.teacher.values():
                module.eval()

    def _loss_stats(self) -> dict:
        n = max(self._loss_parts["batches"], 1)
        stats = {"ctc_loss": self._loss_parts["ctc"] / n}
        if self.teacher is not None and self._loss_parts["kd"]:
            stats["kd_loss"] = self._loss_parts["kd"] / n
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, checkpoint on mean validation WER over ``valid_depths``, write WER details at test."""
        stats = {"loss": stage_loss, **self._loss_stats()}
        if stage == sb.Stage.TRAIN:
            if self.nonfinite_count:
                stats["nonfinite_steps"] = self.nonfinite_count
            if self.nonfinite.total:
                stats["nonfinite_total"] = self.nonfinite.total
            self.askd_end_train(stats)
            self.train_stats = stats
            self._train_cost = {"steps": self.step, "train_s": round(time.time() - self._stage_start, 3),
                                "train_cpu_s": round(time.process_time() - self._stage_cpu, 3)}
            return
        wers = {d: m.summarize("error_rate") for d, m in self.wer_metrics.items()}
        if stage == sb.Stage.VALID:
            for depth, wer in wers.items():
                stats["WER" if depth is None else f"WER_n{depth}"] = wer
            stats["WER"] = sum(wers.values()) / len(wers)
            if self.askd is not None:
                self.askd.end_valid_epoch(stats["WER"])  # before the checkpoint: its state is saved with it
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr}, train_stats=self.train_stats, valid_stats=stats)
            self.log_epoch_cost(epoch, stats)
            keep_epochs = set(self.hparams_get("keep_epochs") or [])
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"], "epoch": epoch}, min_keys=["WER"],
                num_to_keep=int(self.hparams_get("ckpts_to_keep", 2)),
                ckpt_predicate=lambda c: c.meta.get("epoch") not in keep_epochs)
        elif stage == sb.Stage.TEST:
            if getattr(self, "_unreadable_refs", None) and sb.utils.distributed.if_main_process():
                for key, metric in self.wer_metrics.items():  # greedy, and beam when scored
                    for utt, words, _ in self._unreadable_refs:  # every reference word is a deletion
                        metric.append([utt], [[]], [words.split()])
                    wers[key] = metric.summarize("error_rate")
            stats["WER"] = wers[None]
            if "beam" in wers:
                stats["WER_beam"] = wers["beam"]
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats)
            if self.wer_file is not None and sb.utils.distributed.if_main_process():
                Path(self.wer_file).parent.mkdir(parents=True, exist_ok=True)
                with open(self.wer_file, "w") as handle:
                    self.wer_metrics[None].write_stats(handle)
                if "beam" in self.wer_metrics:
                    beam_file = Path(self.wer_file)
                    with open(beam_file.with_name(f"{beam_file.stem}_beam{beam_file.suffix}"), "w") as handle:
                        self.wer_metrics["beam"].write_stats(handle)

    def log_epoch_cost(self, epoch, stats: dict) -> None:
        """Append the epoch's training steps, wall and CPU seconds (train, valid; CPU time is the fairer cost
        on a shared machine) and validation WERs to ``<output_folder>/epoch_log.csv`` (training cost vs
        quality; a resumed run may repeat an epoch: the last row counts)."""
        folder = self.hparams_get("output_folder")
        if folder is None or not sb.utils.distributed.if_main_process():
            return
        row = {"epoch": epoch, **getattr(self, "_train_cost", {"steps": 0, "train_s": 0.0, "train_cpu_s": 0.0}),
               "valid_s": round(time.time() - self._stage_start, 3),
               "valid_cpu_s": round(time.process_time() - self._stage_cpu, 3),
               **{k: round(float(v), 4) for k, v in stats.items() if k.startswith("WER")}}
        path = Path(folder) / "epoch_log.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        fields = list(dict.fromkeys([*(rows[0] if rows else {}), *row]))  # columns of older rows kept
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows([*rows, row])

    def askd_end_train(self, stats: dict) -> None:
        """Add the epoch's ASKD weights (means over its steps) to the training stats, then let the adaptive
        rule see the finished epoch."""
        if self.askd is not None:
            stats.update(self.askd.epoch_stats())
            self.askd.end_train_epoch()

    def check_loss_isfinite(self, loss):
        """A non-finite loss skips the step (its gradients are dropped) and is counted; past
        ``--nonfinite_patience`` such steps in one epoch (the count survives a mid-epoch resume; the run's
        total is logged as ``nonfinite_total``) training stops with :class:`NonFiniteLossError`.

        Under DDP the decision is collective: a flag is all-reduced (max) before ``backward()``, so when any
        rank's loss is non-finite EVERY rank skips the step. (DDP averages gradients in ``backward()``: one
        rank's NaN reaches all ranks, and a rank deciding alone would step with NaN while the others skip.)
        All ranks therefore also count, and stop, together."""
        local_bad = not bool(torch.isfinite(loss))
        bad = local_bad
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if local_bad else 0.0], device=loss.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        if not bad:
            return
        self._skip_step = True
        self.nonfinite.epoch += 1
        self.nonfinite.total += 1
        where = ""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            where = " (on this rank)" if local_bad else " (on another rank)"
        logger.warning("Non-finite loss at epoch %s step %d: step skipped%s (%d so far, patience %d)",
                       self.hparams.epoch_counter.current, self.step, where, self.nonfinite_count,
                       self.nonfinite_patience, main_process_only=False)
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteLossError(
                f"the loss was non-finite in {self.nonfinite_count} steps (patience {self.nonfinite_patience}); "
                "training stopped. The last checkpoint is intact: lower lr, check the data (see "
                "skipped_<set>.txt), or train in float32 (--precision=fp32), then rerun to resume.")

    def lr_schedules(self) -> list:
        """(scheduler, optimizer) pairs advanced once per optimiser step: ``lr_annealing`` on ``optimizer``."""
        annealing = self.hparams_get("lr_annealing")
        return [(annealing, self.optimizer)] if annealing is not None else []

    def optimizers_step(self):
        """SpeechBrain's step with the learning-rate schedule applied BEFORE it (so optimiser step k uses the
        schedule's value for step k: warm-up starts at ``lr / warmup_steps``, not at the peak), except after a
        non-finite loss: then the gradients are dropped and the parameters, optimiser state and schedule
        are left untouched."""
        if getattr(self, "_skip_step", False):
            self._skip_step = False
            self._skipped_step = True
            for param in self.modules.parameters():
                param.grad = None
            return
        for scheduler, optimizer in self.lr_schedules():
            scheduler(optimizer)
        super().optimizers_step()

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the model to evaluate: ``eval_epoch`` (that epoch's checkpoint), else the best by
        ``min_key``; with ``avg_checkpoints: k > 1`` the weights of the k best are averaged."""
        if self.checkpointer is None:
            return
        epoch = self.hparams_get("eval_epoch")
        avg = int(self.hparams_get("avg_checkpoints", 1) or 1)
        if epoch:
            ckpts = self.checkpointer.find_checkpoints(
                ckpt_predicate=lambda c: c.meta.get("epoch") == int(epoch), max_num_checkpoints=1)
            if not ckpts:
                kept = sorted(c.meta.get("epoch") for c in self.checkpointer.list_checkpoints()
                              if c.meta.get("epoch") is not None)
                raise EvaluationError(f"no checkpoint of epoch {epoch} in {self.checkpointer.checkpoints_dir}; "
                                      f"kept epochs: {kept} (keep more with keep_epochs)")
        else:
            ckpts = self.checkpointer.find_checkpoints(max_key=max_key, min_key=min_key,
                                                       max_num_checkpoints=avg)
        if not ckpts:
            raise EvaluationError(f"no trained checkpoint in {self.checkpointer.checkpoints_dir}: train the "
                                  "model first (skip_training: False) or point save_folder at a trained run")
        if not epoch and len(ckpts) < avg:
            raise EvaluationError(
                f"avg_checkpoints: {avg} but only {len(ckpts)} checkpoint(s) kept in "
                f"{self.checkpointer.checkpoints_dir}: train with --ckpts_to_keep={avg} (or more), or ask for "
                f"--avg_checkpoints={len(ckpts)}")
        self.checkpointer.load_checkpoint(ckpts[0])
        if len(ckpts) > 1:
            averaged = sb.utils.checkpoints.average_checkpoints(ckpts, "model")
            self.model.load_state_dict(averaged)
            logger.info("Evaluating the average of %d checkpoints: %s", len(ckpts), [c.path.name for c in ckpts])

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """After an optimiser step (not a skipped one): the ASKD EMA update; then the fault-injection hook.
        (The learning-rate schedule is applied before each step, in :meth:`optimizers_step`.)"""
        skipped = getattr(self, "_skipped_step", False)
        self._skipped_step = False
        if should_step and self.askd is not None and not skipped:
            self.askd.after_batch(self.model)
        maybe_kill("after_step", self.step)
