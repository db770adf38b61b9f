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
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook
from speechbrain.utils.metric_stats import ErrorRateStats

from dld_brain.askd import AgreementRule, top1_agreement
from dld_brain.checkpointing import RandomState
from dld_brain.faults import maybe_kill, nan_loss
from dld_brain.losses import ctc_posterior_kl, valid_frame_mask
from dld_brain.teacher import load_teacher

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss stayed non-finite past the patience; the message says what to try."""


class EvaluationError(RuntimeError):
    """Nothing suitable to evaluate (no checkpoint, or not the asked epoch); the message says what exists."""


class MethodConfigError(ValueError):
    """Inconsistent method hyperparameters (e.g. KD without a teacher); the message names the keys."""


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


class DynamicDepthCTCBrain(sb.Brain):
    """CTC training with gated layer dropping and optional distillation from a frozen teacher.

    Expects in ``modules``: ``model`` (e.g. :class:`dld_brain.lobes.ConformerCTC`) and ``normalize``
    (feature normalisation); in ``hparams``: ``compute_features``, ``ctc_cost``, ``blank_index``,
    ``epoch_counter``, ``train_logger``, ``tokenizer``; optional ``wav_augment``, ``spec_augment`` (list),
    ``lr_annealing``, ``valid_depths``, ``kd_weight``, ``kd_temperature``, ``kd_normalisation``,
    ``teacher_checkpoint``, ``init_from_teacher``, ``askd`` (:class:`dld_brain.askd.ASKD`).
    """

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None):
        check_method_config(hparams or {})
        encoder = modules["model"].encoder
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
            for name, obj in (("gate_sampler", encoder.gate_sampler), ("random_state", RandomState())):
                if name not in self.checkpointer.recoverables:
                    self.checkpointer.add_recoverable(name, obj)

    @property
    def model(self) -> torch.nn.Module:
        """The acoustic model without its DDP wrapper (for depth control and parameter access)."""
        model = self.modules.model
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def hparams_get(self, key, default=None):
        """A hyperparameter or ``default`` when the YAML does not define it."""
        return getattr(self.hparams, key, default)

    # ----------------------------------------------------------------- teacher
    def _setup_teacher(self, checkpoint) -> None:
        """Load the frozen teacher; initialise the student from it when asked (before any resume)."""
        student = {"model": self.modules.model, "normalize": self.modules.normalize}
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
        wavs, wav_lens = batch.sig
        augment_wav = self.hparams_get("wav_augment")
        if stage == sb.Stage.TRAIN and augment_wav is not None:
            wavs = augment_wav(wavs)
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens, epoch=self.hparams.epoch_counter.current)
        if stage == sb.Stage.TRAIN:
            for augment in self.hparams_get("spec_augment") or []:
                feats = augment(feats)
        return feats, wav_lens

    def compute_forward(self, batch, stage):
        """Student CTC log-posteriors, and in DLD training the frozen teacher's on the same features
        (with ASKD also the self-KD targets, as a 4th element)."""
        batch = batch.to(self.device)
        feats, wav_lens = self.compute_features(batch, stage)
        log_probs = self.modules.model(feats, wav_lens)
        teacher_log_probs, self_log_probs = self.distillation_targets(feats, wav_lens, stage)
        if self.askd is None:
            return log_probs, wav_lens, teacher_log_probs
        return log_probs, wav_lens, teacher_log_probs, self_log_probs

    def distillation_targets(self, feats, wav_lens, stage):
        """(teacher, self-KD) output on ``feats`` for this training batch, None when unused; both without
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

    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics; the teacher is (re)asserted frozen at every stage."""
        self._loss_parts = {"ctc": 0.0, "kd": 0.0, "batches": 0}
        self._metric_key = None
        self._stage_start, self._stage_cpu = time.time(), time.process_time()
        if stage == sb.Stage.VALID:
            self.wer_metrics = {d: ErrorRateStats() for d in self.valid_depths()}
        elif stage == sb.Stage.TEST:
            self.wer_metrics = {None: ErrorRateStats()}
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
            stats["WER"] = wers[None]
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats)
            if self.wer_file is not None and sb.utils.distributed.if_main_process():
                Path(self.wer_file).parent.mkdir(parents=True, exist_ok=True)
                with open(self.wer_file, "w") as handle:
                    self.wer_metrics[None].write_stats(handle)

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
        ``--nonfinite_patience`` such steps training stops with :class:`NonFiniteLossError`."""
        if torch.isfinite(loss):
            return
        self._skip_step = True
        self.nonfinite_count += 1
        logger.warning("Non-finite loss at epoch %s step %d: step skipped (%d so far, patience %d)",
                       self.hparams.epoch_counter.current, self.step, self.nonfinite_count,
                       self.nonfinite_patience)
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteLossError(
                f"the loss was non-finite in {self.nonfinite_count} steps (patience {self.nonfinite_patience}); "
                "training stopped. The last checkpoint is intact: lower lr, check the data (see "
                "skipped_<set>.txt), or train in float32 (--precision=fp32), then rerun to resume.")

    def optimizers_step(self):
        """SpeechBrain's step, except after a non-finite loss: then the gradients are dropped and the
        parameters, optimiser state and learning-rate schedule are left untouched."""
        if getattr(self, "_skip_step", False):
            self._skip_step = False
            self._skipped_step = True
            for param in self.modules.parameters():
                param.grad = None
            return
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
        self.checkpointer.load_checkpoint(ckpts[0])
        if len(ckpts) > 1:
            averaged = sb.utils.checkpoints.average_checkpoints(ckpts, "model")
            self.model.load_state_dict(averaged)
            logger.info("Evaluating the average of %d checkpoints: %s", len(ckpts), [c.path.name for c in ckpts])

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Step the per-batch learning-rate schedule, if the YAML defines ``lr_annealing``."""
        annealing = self.hparams_get("lr_annealing")
        skipped = getattr(self, "_skipped_step", False)
        self._skipped_step = False
        if should_step and annealing is not None and not skipped:
            annealing(self.optimizer)
        if should_step and self.askd is not None and not skipped:
            self.askd.after_batch(self.model)
        maybe_kill("after_step", self.step)
