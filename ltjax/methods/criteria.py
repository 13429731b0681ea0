"""Supervised criteria: the loss on (logits, soft labels) of a training step.

A `Criterion` names one loss of `ltjax.losses` and, optionally, deferred re-weighting:

| kind               | per-sample loss                                   | source               |
|--------------------|---------------------------------------------------|----------------------|
| "ce"               | -sum_k y_k log softmax(z)_k                       | ERM / mixup          |
| "balanced_softmax" | CE(z + log(n_k / N), y)                           | BALMS, Ren et al. 2020 |
| "ldam"             | CE(s (z - y m), y), m_k ~ n_k^-1/4, max 0.5, s=30 | LDAM, Cao et al. 2019 |
| "focal"            | -sum_k y_k (1 - p_k)^gamma log p_k                | Lin et al. 2017      |

DRW (Cao et al. 2019): from epoch `drw_epoch` on, class weights
`w_k = (1 - beta) / (1 - beta^n_k)` (beta = 0.9999) normalised to sum to K; before it, ones.
The switch is a `jnp.where` on the traced epoch, so one compiled step serves both phases.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.typing import ArrayLike

from ltjax import _checks, losses

KINDS = ("ce", "balanced_softmax", "ldam", "focal")


@dataclasses.dataclass(frozen=True)
class Criterion:
  """Supervised loss of a recipe, with optional deferred re-weighting (DRW).

  Attributes:
    kind: one of `KINDS`.
    drw_epoch: first epoch (0-based) with DRW weights; None disables DRW.
    beta: DRW effective-number beta (0.9999, Cao et al. 2019).
    max_margin: LDAM largest margin (0.5, Cao et al. 2019).
    scale: LDAM logit scale s (30, Cao et al. 2019).
    focal_gamma: focal-loss gamma (1.0).
  """
  kind: str = "ce"
  drw_epoch: int | None = None
  beta: float = 0.9999
  max_margin: float = 0.5
  scale: float = 30.0
  focal_gamma: float = 1.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown criterion {self.kind!r}; valid: {', '.join(KINDS)}.")
    if self.drw_epoch is not None:
      if int(self.drw_epoch) != self.drw_epoch or self.drw_epoch < 0:
        raise ValueError(f"drw_epoch must be a non-negative integer, got {self.drw_epoch}.")
      if self.kind == "focal":
        raise ValueError("DRW is not defined for the focal criterion (no class weights).")
    if not 0.0 <= self.beta < 1.0:
      raise ValueError(f"beta must lie in [0, 1), got {self.beta}.")
    _checks.check_positive(self.max_margin, "max_margin")
    _checks.check_positive(self.scale, "scale")
    _checks.check_positive(self.focal_gamma, "focal_gamma", allow_zero=True)

  @property
  def required_head(self) -> str | None:
    """The model head this criterion needs ("normalized" for LDAM), else None."""
    return "normalized" if self.kind == "ldam" else None

  def class_weights(self, counts: ArrayLike, epoch: ArrayLike) -> jax.Array | None:
    """DRW class weights at `epoch` (ones before drw_epoch), or None without DRW."""
    if self.drw_epoch is None:
      return None
    return losses.deferred_weights(counts, epoch, self.drw_epoch, self.beta)

  def compute(self, logits: ArrayLike, soft_labels: ArrayLike, counts: ArrayLike,
              epoch: ArrayLike) -> jax.Array:
    """The loss for class counts `counts` at (possibly traced) `epoch`.

    Args:
      logits: (B, K) logits (cosines for LDAM).
      soft_labels: (B, K) soft labels.
      counts: (K,) training images per class.
      epoch: current epoch (0-based, traced or concrete).

    Returns:
      Scalar loss, the (DRW-weighted) batch mean.
    """
    weights = self.class_weights(counts, epoch)
    if self.kind == "ce":
      return losses.soft_cross_entropy(logits, soft_labels, weights)
    if self.kind == "balanced_softmax":
      return losses.balanced_softmax_loss(logits, soft_labels, counts, weights)
    if self.kind == "ldam":
      margins = losses.ldam_margins(counts, self.max_margin)
      return losses.ldam_loss(logits, soft_labels, margins, self.scale, weights)
    return losses.focal_loss(logits, soft_labels, self.focal_gamma)

  def __call__(self, logits: ArrayLike, soft_labels: ArrayLike, ctx) -> jax.Array:
    """The loss of a training step: counts and epoch come from the StepContext `ctx`."""
    return self.compute(logits, soft_labels, ctx.class_counts, ctx.epoch)
