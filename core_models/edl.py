"""Evidential deep learning head and loss (paper Section 4.3, Appendix D.2).

The head turns evidence logits ``f`` into a Dirichlet: ``e = softplus(f / T)``, ``α = e + 1``,
``S = Σ α``, mean probabilities ``p = α / S`` and vacuity ``u = K / S``. Softplus, not ReLU,
because ReLU evidence has zero-gradient regions (Pandey & Yu, 2023).

The loss (Appendix D.2) is the digamma ("Bayes risk of the cross-entropy") form of Sensoy et al.
plus a KL penalty that removes evidence for the wrong classes::

    L = Σ_k y_k (ψ(S) − ψ(α_k))  +  λ_t · KL[Dir(α̃) ‖ Dir(1)],   α̃ = y + (1 − y) ⊙ α,
    λ_t = min(1, epoch / 10).

Example:
    >>> import torch
    >>> out = evidential_output(torch.tensor([[4.0, -4.0, -4.0]]))
    >>> round(float(out.vacuity), 3) == round(3 / float(out.alpha.sum()), 3)
    True
    >>> float(edl_loss(out.alpha, torch.tensor([0]), epoch=0)) > 0
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "EvidentialOutput",
    "edl_loss",
    "edl_nll",
    "evidential_output",
    "kl_annealing",
    "kl_to_uniform_dirichlet",
]


@dataclass
class EvidentialOutput:
    """What TEViD predicts for a batch of clips (all tensors have leading batch dim ``B``).

    Attributes:
        alpha: Dirichlet concentrations ``B×K`` (``evidence + 1``).
        probs: expected class probabilities ``α / S``.
        vacuity: ``K / S`` in ``(0, 1]``; 1 means no evidence at all.
        evidence: non-negative evidence ``softplus(f / T)``.
        logits: raw evidence logits ``f`` before temperature (what calibration refits ``T`` on).
    """

    alpha: torch.Tensor
    probs: torch.Tensor
    vacuity: torch.Tensor
    evidence: torch.Tensor
    logits: torch.Tensor


def evidential_output(logits: torch.Tensor, temperature: float = 1.0) -> EvidentialOutput:
    """Dirichlet quantities from evidence logits, with temperature scaling ``f / T``.

    Example:
        >>> import torch
        >>> evidential_output(torch.zeros(1, 5)).probs
        tensor([[0.2000, 0.2000, 0.2000, 0.2000, 0.2000]])
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float()  # the Dirichlet maths stays in float32 under bf16 autocast
    evidence = F.softplus(logits / temperature)
    alpha = evidence + 1.0
    strength = alpha.sum(dim=-1, keepdim=True)
    return EvidentialOutput(alpha=alpha, probs=alpha / strength,
                            vacuity=logits.shape[-1] / strength.squeeze(-1),
                            evidence=evidence, logits=logits)


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if target.dim() == 1:
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
            raise ValueError(f"targets must be class indices in [0, {num_classes})")
        return F.one_hot(target.long(), num_classes).float()
    return target.float()


def edl_nll(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``Σ_k y_k (ψ(S) − ψ(α_k))`` (``target``: indices ``B`` or one-hot ``B×K``)."""
    y = _one_hot(target, alpha.shape[-1])
    strength = alpha.sum(dim=-1, keepdim=True)
    return (y * (torch.digamma(strength) - torch.digamma(alpha))).sum(dim=-1)


def kl_to_uniform_dirichlet(alpha: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL[Dir(α) ‖ Dir(1)]`` in closed form.

    Example:
        >>> import torch
        >>> float(kl_to_uniform_dirichlet(torch.ones(1, 4)))
        0.0
    """
    k = alpha.shape[-1]
    strength = alpha.sum(dim=-1)
    return (torch.lgamma(strength) - math.lgamma(k) - torch.lgamma(alpha).sum(dim=-1)
            + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(strength)[..., None]))
            .sum(dim=-1))


def kl_annealing(epoch: float, anneal_epochs: float = 10.0) -> float:
    """``λ_t = min(1, epoch / anneal_epochs)``: 0 at the first epoch, 1 from epoch 10 on.

    Example:
        >>> [kl_annealing(e) for e in (0, 5, 10, 30)]
        [0.0, 0.5, 1.0, 1.0]
    """
    if anneal_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch) / anneal_epochs))


def edl_loss(alpha: torch.Tensor, target: torch.Tensor, epoch: float,
             anneal_epochs: float = 10.0, reduction: str = "mean") -> torch.Tensor:
    """Appendix D.2 loss: digamma NLL + annealed KL on the misleading evidence.

    Args:
        alpha: Dirichlet concentrations ``B×K``.
        target: class indices ``B`` (in ``[0, K)``) or one-hot ``B×K``.
        epoch: training progress in epochs (may be fractional); sets ``λ_t``.
        anneal_epochs: epochs over which ``λ`` ramps from 0 to 1 (paper: 10).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    y = _one_hot(target, alpha.shape[-1])
    alpha_tilde = y + (1.0 - y) * alpha        # true-class evidence is not penalised
    loss = edl_nll(alpha, y) + kl_annealing(epoch, anneal_epochs) * kl_to_uniform_dirichlet(
        alpha_tilde)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")
