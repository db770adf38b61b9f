"""ASKD: adaptive self-knowledge distillation (teacher-KD weight on a curriculum, then self-KD).

A student that copies its teacher for the whole training inherits the teacher's over-confidence and
domain limits. ASKD therefore trains with

``L = task + kd_weight * w_teacher(t) * a(t) * KD(teacher || student) + w_self(t) * KD(self || student)``

- ``w_teacher(t)`` and ``w_self(t)``: :class:`WeightSchedule` (constant, linear, cosine, step; by epoch or
  by step). Typically the teacher weight decays (e.g. cosine 1 -> 0) while the self weight rises.
- ``a(t)``: optional adaptive factor in ``[floor, 1]`` (1 without a rule), updated once per epoch:

  * :class:`ValidationGainRule`: after each validation, if the student's validation metric improved by
    less than ``min_gain`` (relative) over the best so far, ``a <- max(floor, a * decay)``. Rationale:
    once the teacher's targets stop producing validation gains, following them further only copies the
    teacher's biases; the rule hands the training over to the labels and to self-distillation sooner.
  * :class:`AgreementRule`: during each training epoch the top-1 agreement ``g`` between teacher and
    student (per frame for CTC, per token for seq2seq, per utterance for classification, padding
    ignored) is averaged; at the epoch end ``a <- clip((1 - g) / (1 - target), floor, 1)``. While the
    student still disagrees with the teacher (g <= target) the teacher keeps its full weight; as the
    student matches it, the teacher has little left to teach and fades out.

- ``KD(self || student)``: self-distillation whose targets come from the student itself and never carry
  gradient (computed under ``torch.no_grad`` in eval mode):

  * ``self_source: ema``: an exponential-moving-average copy of the student (``ema_decay``), updated
    after every optimiser step;
  * ``self_source: full_depth`` (dynamic-depth models): the student's own full-depth path teaches the
    shallower path sampled by the layer gates in the same step (in-place distillation).

The :class:`ASKD` object is a SpeechBrain checkpoint recoverable: its step count, the adaptive rule's
state and the EMA weights are saved, so a resumed run continues the same curriculum. Brains call
:meth:`ASKD.weights` each training batch and log :meth:`ASKD.epoch_stats` (mean weights of the epoch).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterator, Optional, Sequence

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from dld_brain.safe_files import load_torch_file

SCHEDULE_KINDS = ("constant", "linear", "cosine", "step")
SCHEDULE_UNITS = ("epoch", "step")
SELF_SOURCES = ("ema", "full_depth")


class ASKDConfigError(ValueError):
    """An invalid ASKD setting; the message names the key and the allowed values."""


class WeightSchedule:
    """A loss weight as a function of training progress ``t`` (0-based epoch or optimiser step).

    ``constant``: ``start``. ``linear``: ``start -> end`` over ``total`` units, then ``end``.
    ``cosine``: ``end + (start - end) * (1 + cos(pi * min(t / total, 1))) / 2``.
    ``step``: ``start * gamma ** k`` with ``k`` the number of ``milestones`` <= t.
    """

    def __init__(self, kind: str = "constant", start: float = 1.0, end: float = 0.0, unit: str = "epoch",
                 total: Optional[int] = None, milestones: Sequence[int] = (), gamma: float = 0.1):
        if kind not in SCHEDULE_KINDS:
            raise ASKDConfigError(f"schedule kind: unknown {kind!r}; choose one of {SCHEDULE_KINDS}")
        if unit not in SCHEDULE_UNITS:
            raise ASKDConfigError(f"schedule unit: unknown {unit!r}; choose one of {SCHEDULE_UNITS}")
        if kind in ("linear", "cosine") and (total is None or int(total) <= 0):
            raise ASKDConfigError(f"schedule total: a {kind} schedule needs total > 0 ({unit}s), got {total!r}")
        if kind == "step" and not milestones:
            raise ASKDConfigError("schedule milestones: a step schedule needs a non-empty list of milestones")
        self.kind, self.unit = kind, unit
        self.start, self.end, self.gamma = float(start), float(end), float(gamma)
        self.total = int(total) if total is not None else None
        self.milestones = sorted(int(m) for m in milestones)

    def value(self, t: float) -> float:
        """The weight at progress ``t`` (epochs or steps counted from 0)."""
        if self.kind == "constant":
            return self.start
        if self.kind == "step":
            return self.start * self.gamma ** sum(1 for m in self.milestones if t >= m)
        frac = min(max(float(t) / self.total, 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * frac
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def at(self, epoch: int, step: int) -> float:
        """The weight for a 1-based ``epoch`` (SpeechBrain's counter) and 0-based global ``step``."""
        return self.value(max(int(epoch) - 1, 0) if self.unit == "epoch" else int(step))

    def __repr__(self) -> str:
        return (f"WeightSchedule(kind={self.kind!r}, start={self.start}, end={self.end}, unit={self.unit!r}, "
                f"total={self.total}, milestones={self.milestones}, gamma={self.gamma})")


class AdaptiveRule:
    """Base of the adaptive teacher-weight rules: a factor in ``[floor, 1]``, updated once per epoch."""

    def __init__(self, floor: float = 0.0):
        if not 0.0 <= float(floor) <= 1.0:
            raise ASKDConfigError(f"adaptive floor must be in [0, 1], got {floor}")
        self.floor = float(floor)
        self.factor = 1.0

    def observe_batch(self, agreement: Optional[float]) -> None:
        """A training batch's teacher-student agreement (ignored by rules that do not use it)."""

    def end_train_epoch(self) -> None:
        """Called after each training epoch."""

    def end_valid_epoch(self, metric: float) -> None:
        """Called after each validation with the checkpoint metric (lower is better)."""

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class ValidationGainRule(AdaptiveRule):
    """Teacher factor decays by ``decay`` whenever the validation metric gains less than ``min_gain``
    (relative to the best so far; lower is better)."""

    def __init__(self, min_gain: float = 0.01, decay: float = 0.5, floor: float = 0.0):
        super().__init__(floor)
        if not 0.0 <= float(decay) <= 1.0:
            raise ASKDConfigError(f"ValidationGainRule decay must be in [0, 1], got {decay}")
        self.min_gain, self.decay = float(min_gain), float(decay)
        self.best: Optional[float] = None

    def end_valid_epoch(self, metric: float) -> None:
        metric = float(metric)
        if self.best is not None:
            gain = (self.best - metric) / max(abs(self.best), 1e-8)
            if gain < self.min_gain:
                self.factor = max(self.floor, self.factor * self.decay)
        self.best = metric if self.best is None else min(self.best, metric)


class AgreementRule(AdaptiveRule):
    """Teacher factor ``clip((1 - g) / (1 - target), floor, 1)`` from the epoch's mean top-1 agreement g."""

    def __init__(self, target: float = 0.9, floor: float = 0.0):
        super().__init__(floor)
        if not 0.0 <= float(target) < 1.0:
            raise ASKDConfigError(f"AgreementRule target must be in [0, 1), got {target}")
        self.target = float(target)
        self._sum, self._count = 0.0, 0
        self.last_agreement: Optional[float] = None

    def observe_batch(self, agreement: Optional[float]) -> None:
        if agreement is not None:
            self._sum += float(agreement)
            self._count += 1

    def end_train_epoch(self) -> None:
        if not self._count:
            return
        g = self._sum / self._count
        self.last_agreement = g
        self.factor = min(1.0, max(self.floor, (1.0 - g) / (1.0 - self.target)))
        self._sum, self._count = 0.0, 0


def top1_agreement(student: torch.Tensor, teacher: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Fraction of positions (last dim = classes) where teacher and student agree on the argmax."""
    same = (student.detach().argmax(-1) == teacher.detach().argmax(-1)).float()
    if mask is None:
        return float(same.mean())
    mask = mask.to(same.dtype)
    return float((same * mask).sum() / mask.sum().clamp(min=1.0))


def masked_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, mask: Optional[torch.Tensor] = None,
              temperature: float = 1.0) -> torch.Tensor:
    """KL(target || student) per position over the last dim, mean over ``mask``-ed positions, times T^2;
    the target gets no gradient (used for seq2seq tokens)."""
    if student_logits.shape != target_logits.shape:
        raise ValueError(f"student and target logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(target_logits.shape)}")
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    target = torch.log_softmax(target_logits.detach().float() / temperature, dim=-1)
    per_pos = (target.exp() * (target - student)).sum(dim=-1)
    if mask is None:
        return per_pos.mean() * temperature**2
    mask = mask.to(per_pos.dtype)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1.0) * temperature**2


@register_checkpoint_hooks
class ASKD:
    """The ASKD objective's configuration and state (schedules, adaptive rule, EMA copy, step count).

    ``teacher_schedule`` scales the teacher-KD term (multiplied by the Brain's ``kd_weight`` and the
    adaptive factor); ``self_schedule`` weights the self-KD term (None or 0 everywhere: no self-KD).
    ``self_source``: ``ema`` or ``full_depth`` (see the module docstring). ``temperature`` softens the
    self-KD term (the teacher term keeps the Brain's ``kd_temperature``).
    """

    def __init__(self, teacher_schedule: Optional[WeightSchedule] = None,
                 self_schedule: Optional[WeightSchedule] = None, self_source: str = "full_depth",
                 ema_decay: float = 0.999, adaptive: Optional[AdaptiveRule] = None, temperature: float = 1.0):
        if self_source not in SELF_SOURCES:
            raise ASKDConfigError(f"askd self_source: unknown {self_source!r}; choose one of {SELF_SOURCES}")
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ASKDConfigError(f"askd ema_decay must be in [0, 1), got {ema_decay}")
        if temperature <= 0:
            raise ASKDConfigError(f"askd temperature must be > 0, got {temperature}")
        self.teacher_schedule = teacher_schedule or WeightSchedule("constant", 1.0)
        self.self_schedule = self_schedule
        self.self_source = self_source
        self.ema_decay = float(ema_decay)
        self.adaptive = adaptive
        self.temperature = float(temperature)
        self.step = 0
        self.ema: Optional[torch.nn.Module] = None
        self._epoch_sums: dict = {}

    # ---------------------------------------------------------------- weights
    @property
    def factor(self) -> float:
        """The adaptive teacher factor (1 without a rule)."""
        return self.adaptive.factor if self.adaptive is not None else 1.0

    @property
    def uses_self_kd(self) -> bool:
        """Whether a self-KD term is configured at all."""
        return self.self_schedule is not None

    def weights(self, epoch: int) -> tuple[float, float]:
        """(teacher multiplier incl. adaptive factor, self-KD weight) for this batch; recorded for the log."""
        w_teacher = self.teacher_schedule.at(epoch, self.step) * self.factor
        w_self = self.self_schedule.at(epoch, self.step) if self.self_schedule is not None else 0.0
        self._accumulate(w_teacher=w_teacher, w_self=w_self)
        return w_teacher, w_self

    def _accumulate(self, **values) -> None:
        for key, value in values.items():
            total, count = self._epoch_sums.get(key, (0.0, 0))
            self._epoch_sums[key] = (total + float(value), count + 1)

    def record(self, **values) -> None:
        """Add per-batch values (losses, agreement) to the epoch means reported by :meth:`epoch_stats`."""
        self._accumulate(**{k: v for k, v in values.items() if v is not None})
        if "agreement" in values and self.adaptive is not None:
            self.adaptive.observe_batch(values["agreement"])

    def epoch_stats(self) -> dict:
        """Mean weights (and recorded values) of the epoch plus the adaptive factor; resets the means."""
        stats = {k: round(total / max(count, 1), 5) for k, (total, count) in self._epoch_sums.items()}
        if self.adaptive is not None:
            stats["askd_factor"] = round(self.factor, 5)
        self._epoch_sums = {}
        return stats

    # ---------------------------------------------------------------- events
    def after_batch(self, student: torch.nn.Module) -> None:
        """Count the step and update the EMA copy (call after each optimiser step)."""
        self.step += 1
        if self.ema is not None:
            update_ema(self.ema, student, self.ema_decay)

    def end_train_epoch(self) -> None:
        """Let the adaptive rule see the finished training epoch."""
        if self.adaptive is not None:
            self.adaptive.end_train_epoch()

    def end_valid_epoch(self, metric: float) -> None:
        """Let the adaptive rule see the validation metric (lower is better)."""
        if self.adaptive is not None:
            self.adaptive.end_valid_epoch(metric)

    # ---------------------------------------------------------------- self-KD targets
    def attach(self, student: torch.nn.Module) -> None:
        """Create the EMA copy of ``student`` when ``self_source`` is ``ema`` (call once the student is
        initialised, e.g. after ``init_from_teacher``); check that ``full_depth`` has a gated encoder."""
        if not self.uses_self_kd:
            return
        if self.self_source == "ema":
            self.ema = make_ema_copy(student)
        elif getattr(getattr(student, "encoder", None), "num_layers", None) is None:
            raise ASKDConfigError("askd self_source: full_depth needs a dynamic-depth model (model.encoder with "
                                  "num_layers); use self_source: ema for other models")

    @contextlib.contextmanager
    def target_model(self, student: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Context giving the module that produces self-KD targets (the EMA copy, or the student itself),
        in eval mode under ``torch.no_grad``; the student's train/eval mode is restored afterwards."""
        module = self.ema if self.self_source == "ema" else student
        if module is None:
            raise ASKDConfigError("askd: self_source is ema but attach(student) was not called")
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                yield module
        finally:
            module.train(was_training)

    # ---------------------------------------------------------------- checkpointing
    @mark_as_saver
    def _save(self, path) -> None:
        torch.save({"step": self.step,
                    "adaptive": self.adaptive.state_dict() if self.adaptive is not None else None,
                    "ema": self.ema.state_dict() if self.ema is not None else None}, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False) -> None:
        del end_of_epoch
        saved = load_torch_file(path)
        self.step = int(saved["step"])
        if self.adaptive is not None and saved["adaptive"] is not None:
            self.adaptive.load_state_dict(saved["adaptive"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.load_state_dict(saved["ema"])


def make_ema_copy(student: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of ``student`` (no parameter requires grad), in eval mode."""
    ema = copy.deepcopy(student)
    for param in ema.parameters():
        param.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * student`` for parameters; buffers are copied."""
    for e, s in zip(ema.parameters(), student.parameters()):
        e.mul_(decay).add_(s.detach().to(e.dtype), alpha=1.0 - decay)
    for e, s in zip(ema.buffers(), student.buffers()):
        e.copy_(s)
