"""Distillation losses for dynamic-depth CTC and classification models.

:func:`ctc_posterior_kl` is the DLD term: KL(teacher || student) between frame-level CTC posteriors,
padding frames masked. Normalisation (documented, configurable):
``"frames"`` (default): sum over vocabulary, mean over all valid frames of the batch (each frame weighs
the same, like a frame-level cross-entropy); ``"utterances"``: per-utterance mean over its valid frames,
then mean over utterances (short utterances weigh as much as long ones).
With temperature ``T`` both distributions are softened by ``T`` and the loss is multiplied by ``T**2``
(Hinton et al.) so its gradient scale does not depend on ``T``. Computed in float32 for fp16/bf16 safety.
"""

from __future__ import annotations

import torch

KD_NORMALISATIONS = ("frames", "utterances")


def valid_frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (B, T) mask of the valid frames from SpeechBrain relative lengths (0..1]."""
    abs_len = torch.round(lengths.float() * max_len).long().clamp(min=1, max=max_len)
    return torch.arange(max_len, device=lengths.device)[None, :] < abs_len[:, None]


def ctc_posterior_kl(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    lengths: torch.Tensor,
    temperature: float = 1.0,
    normalisation: str = "frames",
) -> torch.Tensor:
    """KL(teacher || student) on (B, T, V) log-posteriors with padding masked; the teacher gets no gradient.

    ``lengths`` are SpeechBrain relative lengths (B,). Returns a scalar; see the module docstring for the
    normalisation and the temperature scaling.
    """
    if student_log_probs.shape != teacher_log_probs.shape:
        raise ValueError(
            f"student and teacher posteriors differ in shape: {tuple(student_log_probs.shape)} vs "
            f"{tuple(teacher_log_probs.shape)} (same front-end and vocabulary needed)"
        )
    if normalisation not in KD_NORMALISATIONS:
        raise ValueError(f"unknown KD normalisation {normalisation!r}; choose one of {KD_NORMALISATIONS}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student = torch.log_softmax(student_log_probs.float() / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_log_probs.detach().float() / temperature, dim=-1)
    per_frame = (teacher.exp() * (teacher - student)).sum(dim=-1)  # (B, T)
    mask = valid_frame_mask(lengths, per_frame.shape[1]).to(per_frame.dtype)
    per_frame = per_frame * mask
    if normalisation == "frames":
        loss = per_frame.sum() / mask.sum().clamp(min=1.0)
    else:
        loss = (per_frame.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    return loss * temperature**2


def posterior_kl(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) for utterance-level (B, C) log-posteriors (classification), batch mean."""
    if student_log_probs.shape != teacher_log_probs.shape:
        raise ValueError(
            f"student and teacher posteriors differ in shape: {tuple(student_log_probs.shape)} vs "
            f"{tuple(teacher_log_probs.shape)}"
        )
    student = torch.log_softmax(student_log_probs.float() / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_log_probs.detach().float() / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1).mean() * temperature**2
