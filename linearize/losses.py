"""Losses of the two training stages.

All token losses return ``(sum, count)`` over the positions that are trained on, so gradient
accumulation and several processes can normalise by the number of tokens in the whole batch.
``labels`` are aligned with ``input_ids`` (Hugging Face convention): position t's logits predict
``labels[t + 1]``; label -100 (prompt tokens) is ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def _shift(logits: torch.Tensor, labels: torch.Tensor):
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return logits, targets, mask


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and their number."""
    logits, targets, mask = _shift(logits, labels)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, int(mask.sum())


def kd_sum(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, int]:
    """Summed KL(teacher || student) of the next-token distributions at temperature T (times T^2)."""
    s, _targets, mask = _shift(student_logits, labels)
    t = teacher_logits[:, :-1].float()
    s, t = s[mask], t[mask]
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum() * temperature**2
    return kl, int(mask.sum())


def recovery_loss_sum(
    kind: str,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    kd_weight: float = 0.5,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, int]:
    """``ce``, ``kd`` or ``mix`` = (1 - kd_weight) * ce + kd_weight * kd, summed over tokens."""
    if kind == "ce":
        return cross_entropy_sum(student_logits, labels)
    if teacher_logits is None:
        raise ValueError(f"loss {kind!r} needs the teacher's logits")
    kd, n = kd_sum(student_logits, teacher_logits, labels, temperature)
    if kind == "kd":
        return kd, n
    if kind == "mix":
        ce, _ = cross_entropy_sum(student_logits, labels)
        return (1.0 - kd_weight) * ce + kd_weight * kd, n
    raise ValueError(f"unknown recovery loss {kind!r} (ce, kd or mix)")


def transfer_loss(layer_losses: list[torch.Tensor], loss_scale: float = 1.0) -> torch.Tensor:
    """Stage 1: ``loss_scale`` x the mean over linearized layers of their attention-output MSE."""
    if not layer_losses:
        raise ValueError("no linearized layer reported a transfer loss (is the model in 'transfer' mode?)")
    return loss_scale * torch.stack([x.float() for x in layer_losses]).mean()
