"""Training a layer selector (input-conditioned layer dropping) on a layer-dropping CTC backbone.

:class:`SelectorCTCBrain` extends :class:`dld_brain.brain.DynamicDepthCTCBrain`: modules ``model`` (the
backbone, e.g. a DLD or RDsc :class:`~dld_brain.lobes.ConformerCTC`), ``normalize`` and ``selector`` (a
:class:`~dld_brain.lobes.selector.LayerSelector`). Each training utterance draws a budget k from
``train_budgets`` (default 1..N), the selector's straight-through gates choose its layers and the loss is

    CTC + budget_weight * budget_loss + kd_weight * KL(teacher || student)

(the KD term as in DLD, teacher = ``teacher_checkpoint``, e.g. the backbone itself at full depth). With
``freeze_backbone: True`` (the paper's setting) only the selector learns and the backbone stays in eval mode;
``False`` fine-tunes both jointly. Validation runs the exact top-k selection at every budget of
``valid_budgets``; the checkpoint metric is their mean WER.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Union

import speechbrain as sb
import torch
from speechbrain.utils.logger import get_logger

from dld_brain.brain import DynamicDepthCTCBrain
from dld_brain.lobes.selector import BudgetError, SelectiveDepthModel, budget_loss, budget_tensor
from dld_brain.teacher import find_checkpoint, load_module_checked, load_with_default_hook

logger = get_logger(__name__)  # SpeechBrain's: logs on the main process only


def load_backbone(modules: dict, checkpoint: Union[str, Path]) -> Path:
    """Load a trained backbone run (``model`` and ``normalize``) into ``modules``; returns the checkpoint dir.

    ``checkpoint`` is a run's output folder, its ``save`` folder or one ``CKPT+`` dir (best WER wins).
    """
    ckpt = find_checkpoint(checkpoint)
    load_module_checked(modules["model"], ckpt / "model.ckpt")
    load_with_default_hook(modules["normalize"], ckpt / "normalize.ckpt")
    logger.info("Backbone loaded from %s", ckpt)
    return ckpt


def parse_budgets(budgets, num_layers: int, key: str) -> list[int]:
    """A budget list from the hparams (``null``/``all`` = 1..N), each checked to be in 1..N."""
    if budgets is None or budgets == "all":
        return list(range(1, num_layers + 1))
    if isinstance(budgets, (int, str)):
        budgets = [budgets]
    out = []
    for k in budgets:
        try:
            out.append(int(budget_tensor(k, 1, num_layers)[0]))
        except BudgetError as err:
            raise BudgetError(f"{key}: {err}") from None
    if not out:
        raise BudgetError(f"{key} is empty: give budgets in 1..{num_layers}")
    return sorted(set(out))


class SelectorCTCBrain(DynamicDepthCTCBrain):
    """CTC + budget (+ KD) training of a layer selector on a frozen or jointly fine-tuned backbone.

    Extra hparams: ``backbone_checkpoint`` (trained backbone run, loaded before training), ``freeze_backbone``,
    ``budget_weight``, ``selector_relaxation`` (``gumbel_sigmoid``/``gumbel_topk``), ``gumbel_tau``,
    ``train_budgets``, ``valid_budgets``, ``selector_execution`` (``auto``/``grouped``/``masked``).
    """

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None):
        hparams = hparams or {}
        if hparams.get("backbone_checkpoint") and not hparams.get("skip_training", False):
            load_backbone(modules, hparams["backbone_checkpoint"])
        self.freeze_backbone = bool(hparams.get("freeze_backbone", True))
        if self.freeze_backbone:
            for module in (modules["model"], modules["normalize"]):
                module.requires_grad_(False)
            modules["normalize"].update_until_epoch = 0  # keep the backbone's feature statistics
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        num_layers = self.model.encoder.num_layers
        self.train_budgets = parse_budgets(self.hparams_get("train_budgets"), num_layers, "train_budgets")
        self.valid_budget_list = parse_budgets(self.hparams_get("valid_budgets"), num_layers, "valid_budgets")
        self.budget_weight = float(self.hparams_get("budget_weight", 1.0))
        self.eval_budget: int = num_layers // 2 or 1
        self.selective = SelectiveDepthModel(
            self.model, self.modules.selector, relaxation=self.hparams_get("selector_relaxation", "gumbel_sigmoid"),
            tau=float(self.hparams_get("gumbel_tau", 1.0)), execution=self.hparams_get("selector_execution", "auto"))
        self.find_unused_parameters = True  # layers no utterance keeps get no gradient in joint fine-tuning

    def valid_depths(self) -> list:
        """Validation runs every budget of ``valid_budgets`` (the metric keys are budgets k)."""
        return list(self.valid_budget_list)

    def evaluate_batch(self, batch, stage):
        """Validation: the exact top-k selection at every budget; test: at ``self.eval_budget``."""
        if stage != sb.Stage.VALID:
            self._metric_key = None
            return sb.Brain.evaluate_batch(self, batch, stage)
        losses = []
        for k in self.valid_budget_list:
            self._metric_key = k
            self.eval_budget = k
            losses.append(sb.Brain.evaluate_batch(self, batch, stage))
        return sum(losses) / len(losses)

    def compute_forward(self, batch, stage):
        """Selector + backbone log-posteriors (relaxed gates in training, top-k otherwise), and the
        teacher's in KD training (its input per ``kd_teacher_input``)."""
        batch = batch.to(self.device)
        train = stage == sb.Stage.TRAIN
        if train and self.freeze_backbone:  # SpeechBrain sets every module to train mode each epoch
            self.model.eval()
            self.modules.normalize.eval()
        feats, target_feats, wav_lens = self.compute_student_teacher_features(batch, stage)
        if train:
            budgets = torch.tensor([random.choice(self.train_budgets) for _ in range(feats.shape[0])],
                                   device=feats.device)
        else:
            budgets = self.eval_budget
        log_probs, logits, gates = self.selective(feats, wav_lens, budgets, relaxed=train)
        teacher_log_probs = None
        if train and self.teacher is not None:
            with torch.no_grad():
                teacher_log_probs = self.teacher["model"](target_feats, wav_lens)
        return log_probs, wav_lens, teacher_log_probs, logits, gates, budgets

    def compute_objectives(self, predictions, batch, stage):
        """The parent's CTC (+ KD) loss and WER bookkeeping, plus ``budget_weight * budget_loss`` in training."""
        log_probs, wav_lens, teacher_log_probs, logits, gates, budgets = predictions
        loss = super().compute_objectives((log_probs, wav_lens, teacher_log_probs), batch, stage)
        if stage == sb.Stage.TRAIN:
            loss_budget = budget_loss(logits, budgets)
            self._loss_parts["budget"] = self._loss_parts.get("budget", 0.0) + float(loss_budget.detach())
            excess = gates.detach().sum(dim=1) - budgets.to(gates.dtype)
            self._loss_parts["excess"] = self._loss_parts.get("excess", 0.0) + float(excess.mean())
            loss = loss + self.budget_weight * loss_budget
        return loss

    def _loss_stats(self) -> dict:
        stats = super()._loss_stats()
        n = max(self._loss_parts["batches"], 1)
        if "budget" in self._loss_parts:
            stats["budget_loss"] = self._loss_parts["budget"] / n
            stats["kept_minus_k"] = self._loss_parts["excess"] / n  # mean executed layers - budget (training)
        return stats

    def evaluate_at(self, dataset, k: int, loader_kwargs: Optional[dict] = None) -> float:
        """Test-set WER with exactly ``k`` selected layers per utterance (best checkpoint loaded)."""
        self.eval_budget = int(budget_tensor(k, 1, self.model.encoder.num_layers)[0])
        self.evaluate(dataset, min_key="WER", test_loader_kwargs=loader_kwargs or {})
        return self.test_stats["WER"]
