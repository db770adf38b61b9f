"""Brain for dynamic-depth utterance classification (spoken language understanding: intents).

:class:`DynamicDepthClassifierBrain` is :class:`~dld_brain.brain.DynamicDepthCTCBrain` with the CTC parts
swapped for classification; everything else is inherited unchanged: teacher loading and freezing,
``init_from_teacher``, feature computation and augmentation, validation at every depth of ``valid_depths``,
checkpoint selection, non-finite loss handling, resumable gates and RNG state, evaluation of the best /
an epoch's / averaged checkpoints. The method is chosen by hyperparameters exactly as for CTC:

=========  ============  ======================  ==================  ============
method     ``drop_prob``  ``teacher_checkpoint``  ``init_from_teacher``  ``kd_weight``
=========  ============  ======================  ==================  ============
static     0              -                       -                   0
RD         0.5            -                       -                   0
DLD        0.5            teacher run             True                > 0
=========  ============  ======================  ==================  ============

DLD's objective is ``NLL(student) + kd_weight * KL(teacher || student)`` on the utterance-level posteriors
of the frozen teacher (:func:`dld_brain.losses.posterior_kl`, softened by ``kd_temperature``). An ``askd``
object in the hparams (:mod:`dld_brain.askd`) schedules the teacher term and adds self-KD, as for CTC.

Pool-norm recalibration: a classifier with batch norms on its pooled vector (one set of statistics per depth,
:class:`dld_brain.lobes.classifier.ConformerClassifier`) gets them recomputed from ``pool_norm_calibration``
un-augmented training utterances (``brain.calibration_set``, set by the recipe) before every validation
and test, with the weights being evaluated; the running averages of training are unusable there.

Metrics: accuracy and error rate (%) per validated depth; the checkpoint metadata keeps ``WER`` = error
rate (mean over ``valid_depths``), so the inherited checkpoint selection and the teacher lookup (lowest
``WER``) work as for ASR, and ``accuracy`` = its complement, for ``max_key="accuracy"``. At test time
``test_stats["accuracy"]`` is set (read by the depth sweep) and, when ``wer_file`` is set, the class-wise
accuracy, the confusions and every utterance's prediction are written there.
"""

from __future__ import annotations

import random
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.metric_stats import ClassificationStats

from dld_brain.askd import top1_agreement
from dld_brain.brain import DynamicDepthCTCBrain
from dld_brain.faults import nan_loss
from dld_brain.gates import select_layers
from dld_brain.losses import posterior_kl


class DynamicDepthClassifierBrain(DynamicDepthCTCBrain):
    """Utterance classification with gated layer dropping and optional distillation from a frozen teacher.

    Expects in ``modules``: ``model`` (e.g. :class:`dld_brain.lobes.classifier.ConformerClassifier`) and
    ``normalize``; in ``hparams``: ``compute_features``, ``epoch_counter``, ``train_logger``; optional as for
    :class:`DynamicDepthCTCBrain`. Batches carry ``sig`` and ``intent_encoded`` (class indices, (B, 1)).
    Set ``brain.label_encoder`` (a CategoricalEncoder) to get label names in the test reports.
    """

    label_encoder = None
    #: training utterances for the pool-norm recalibration (set by the recipe; see calibrate_pool_norms)
    calibration_set = None
    _calibration_batches = None

    def compute_forward(self, batch, stage):
        """Student log-posteriors (B, C), and in DLD training the frozen teacher's (on the student's features or,
        with ``kd_teacher_input: clean``, on them before SpecAugment; with ASKD also the self-KD targets, as a
        3rd element)."""
        batch = batch.to(self.device)
        feats, target_feats, wav_lens = self.compute_student_teacher_features(batch, stage)
        log_probs = self.modules.model(feats, wav_lens)
        teacher_log_probs, self_log_probs = self.distillation_targets(target_feats, wav_lens, stage)
        if self.askd is None:
            return log_probs, teacher_log_probs
        return log_probs, teacher_log_probs, self_log_probs

    def compute_objectives(self, predictions, batch, stage):
        """NLL (+ kd_weight * KL to the teacher in DLD training, + the ASKD terms when configured); errors
        counted per depth outside training."""
        log_probs, teacher_log_probs, *rest = predictions
        self_log_probs = rest[0] if rest else None
        targets = self.replicate_labels(batch.intent_encoded.data.reshape(-1).to(log_probs.device), stage)
        loss = torch.nn.functional.nll_loss(log_probs, targets)
        self._loss_parts["nll"] += float(loss.detach())
        if teacher_log_probs is not None:
            loss_kd = posterior_kl(log_probs, teacher_log_probs,
                                   temperature=float(self.hparams_get("kd_temperature", 1.0)))
            loss = self.add_teacher_term(loss, loss_kd, lambda: top1_agreement(log_probs, teacher_log_probs))
        if self_log_probs is not None:
            loss = self.add_self_term(
                loss, posterior_kl(log_probs, self_log_probs, temperature=self.askd.temperature))
        self._loss_parts["batches"] += 1
        if stage == sb.Stage.TRAIN and nan_loss(self.step):
            loss = loss * float("nan")  # fault injection (tests only; see dld_brain.faults)
        if stage != sb.Stage.TRAIN:
            predicted = log_probs.argmax(dim=-1).tolist()
            self.class_metrics[self._metric_key].append(
                batch.id, [self._label(i) for i in predicted], [self._label(i) for i in targets.tolist()])
        return loss

    def _label(self, index: int) -> str:
        """Class name of an index (the index itself without a label encoder)."""
        if self.label_encoder is None:
            return str(index)
        return str(self.label_encoder.ind2lab[int(index)])

    def calibration_batches(self) -> list:
        """(feats, wav_lens) of ``pool_norm_calibration`` training utterances: a seeded random choice, sorted
        by duration, un-augmented. The audio batches are loaded once; features are computed on each call
        (they follow the current input normalisation)."""
        if self._calibration_batches is None:
            count = int(self.hparams_get("pool_norm_calibration", 0) or 0)
            data = self.calibration_set
            self._calibration_batches = []
            if count > 0 and data is not None:
                ids = list(data.data_ids)
                chosen = set(random.Random(int(self.hparams_get("seed", 0))).sample(ids, min(count, len(ids))))
                subset = data.filtered_sorted(key_test={"id": lambda i: i in chosen}, sort_key="duration")
                loader = sb.dataio.dataloader.make_dataloader(subset, batch_size=32)
                self._calibration_batches = [batch.to(self.device) for batch in loader]
        self.modules.eval()
        with torch.no_grad():
            return [self.compute_features(batch, sb.Stage.VALID) for batch in self._calibration_batches]

    def calibrate_pool_norms(self, layer_sets=None) -> None:
        """Recompute the model's pool-norm statistics from :meth:`calibration_batches` with the current weights,
        at every depth or at ``layer_sets`` (see
        :meth:`dld_brain.lobes.classifier.ConformerClassifier.calibrate_pool_norms`); no-op without data."""
        calibrate = getattr(self.model, "calibrate_pool_norms", None)
        batches = self.calibration_batches()
        if calibrate is not None and batches:
            calibrate(batches, layer_sets)

    def on_stage_start(self, stage, epoch=None):
        """Fresh loss parts and per-depth classification metrics (the teacher is re-frozen by the parent).
        The pool norms are recalibrated before validation (at the validated depths, so the saved checkpoint
        holds their statistics) and before a test (the evaluated weights, e.g. averaged checkpoints, at its
        layer set)."""
        encoder = self.model.encoder
        if stage == sb.Stage.VALID:
            self.calibrate_pool_norms([select_layers(encoder.num_layers, depth, policy=encoder.depth_policy)
                                       for depth in self.valid_depths()])
        elif stage == sb.Stage.TEST:
            layers = encoder.inference_layers
            self.calibrate_pool_norms([list(range(encoder.num_layers)) if layers is None else list(layers)])
        super().on_stage_start(stage, epoch)
        self._loss_parts = {"nll": 0.0, "kd": 0.0, "batches": 0}
        if stage == sb.Stage.VALID:
            self.class_metrics = {d: ClassificationStats() for d in self.valid_depths()}
        elif stage == sb.Stage.TEST:
            self.class_metrics = {None: ClassificationStats()}

    def _loss_stats(self) -> dict:
        n = max(self._loss_parts["batches"], 1)
        stats = {"nll_loss": self._loss_parts["nll"] / n}
        if self.teacher is not None and self._loss_parts["kd"]:
            stats["kd_loss"] = self._loss_parts["kd"] / n
        return stats

    @staticmethod
    def _accuracy(metric: ClassificationStats) -> float:
        """Accuracy in % (0 when nothing was evaluated)."""
        return 100.0 * metric.summarize("accuracy") if metric.ids else 0.0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log; checkpoint on the mean validation error rate over ``valid_depths`` (meta ``WER``); at test set
        ``test_stats`` (``accuracy``, ``error_rate``, ``WER``) and write the report to ``wer_file``."""
        stats = {"loss": stage_loss, **self._loss_stats()}
        if stage == sb.Stage.TRAIN:
            if self.nonfinite_count:
                stats["nonfinite_steps"] = self.nonfinite_count
            self.askd_end_train(stats)
            self.train_stats = stats
            return
        accs = {d: self._accuracy(m) for d, m in self.class_metrics.items()}
        if stage == sb.Stage.VALID:
            for depth, acc in accs.items():
                if depth is not None:
                    stats[f"acc_n{depth}"] = round(acc, 2)
            stats["accuracy"] = sum(accs.values()) / len(accs)
            stats["error_rate"] = 100.0 - stats["accuracy"]
            if self.askd is not None:
                self.askd.end_valid_epoch(stats["error_rate"])
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr}, train_stats=self.train_stats, valid_stats=stats)
            keep_epochs = set(self.hparams_get("keep_epochs") or [])
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["error_rate"], "accuracy": stats["accuracy"], "epoch": epoch},
                min_keys=["WER"], num_to_keep=int(self.hparams_get("ckpts_to_keep", 2)),
                ckpt_predicate=lambda c: c.meta.get("epoch") not in keep_epochs)
        elif stage == sb.Stage.TEST:
            stats["accuracy"] = accs[None]
            stats["error_rate"] = stats["WER"] = 100.0 - accs[None]
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats)
            if self.wer_file is not None and sb.utils.distributed.if_main_process():
                self.write_report(self.wer_file)

    def write_report(self, path) -> None:
        """Class-wise accuracy and confusions (SpeechBrain's ClassificationStats), then one line per utterance."""
        metric = self.class_metrics[None]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            if not metric.ids:
                handle.write("no utterances evaluated\n")
                return
            metric.write_stats(handle)
            handle.write("\nID\ttarget\tprediction\tcorrect\n")
            for utt, target, pred in zip(metric.ids, metric.targets, metric.predictions):
                handle.write(f"{utt}\t{target}\t{pred}\t{int(target == pred)}\n")
