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

Mixed labels (`ltjax.mixing.MixedLabels`) and class weights: each reference code has its
own loss, and each method follows its own (SPEC section 5):

| label_form | reduction    | loss                                                    | reference           |
|------------|--------------|---------------------------------------------------------|---------------------|
| "sides"    | "normalized" | lam L_w(z, y_a) + (1 - lam) L_w(z, y_b), each side      | LDAM-DRW (hard      |
|            |              | `F.cross_entropy(weight=w)`: sum_i w l_i / sum_i w      | labels), OTmix code |
| "sides"    | "mean"       | (1/B) sum_i (lam w_a l_a + (1 - lam) w_b l_b)           | imbalanced-DL,      |
|            |              |                                                         | MAMix Algorithm 1   |
| "soft"     | "normalized" | sum_ik w_k y_ik l_ik / sum_ik w_k y_ik, y the soft label | ltjax 0.1 (option)  |
| "soft"     | "mean"       | (1/B) sum_ik w_k y_ik l_ik (= sides/mean but for LDAM)   |                     |

Without class weights every form of CE / balanced softmax is the same loss. LDAM's margin
depends on the label: "sides" gives each side its full margin (the references), "soft"
subtracts `lam m_a` and `(1 - lam) m_b` from one set of logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ltjax import _checks, losses, mixing, recipe

KINDS = ("ce", "balanced_softmax", "ldam", "focal")
LABEL_FORMS = ("sides", "soft")


@dataclasses.dataclass(frozen=True)
class Criterion(recipe.Hyperparameters):
  """Supervised loss of a recipe, with optional deferred re-weighting (DRW).

  Attributes:
    kind: one of `KINDS`.
    drw_epoch: first epoch (0-based) with DRW weights; None disables DRW.
    beta: DRW effective-number beta (0.9999, Cao et al. 2019).
    max_margin: LDAM largest margin (0.5, Cao et al. 2019).
    scale: LDAM logit scale s (30, Cao et al. 2019).
    focal_gamma: focal-loss gamma (1.0).
    reduction: how class-weighted losses are reduced over the batch, "normalized" (PyTorch's
      `F.cross_entropy(weight=w)`, LDAM-DRW / OTmix code) or "mean" (imbalanced-DL); see
      the module table.
    label_form: "sides" (the references' `lam L(z, y_a) + (1 - lam) L(z, y_b)`) or "soft"
      (the loss of the mixed soft label).
  """
  kind: str = "ce"
  drw_epoch: int | None = None
  beta: float = 0.9999
  max_margin: float = 0.5
  scale: float = 30.0
  focal_gamma: float = 1.0
  reduction: str = "normalized"
  label_form: str = "sides"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown criterion {self.kind!r}; valid: {', '.join(KINDS)}.")
    if self.reduction not in losses.REDUCTIONS:
      raise ValueError(f"Unknown reduction {self.reduction!r}; valid: "
                       f"{', '.join(losses.REDUCTIONS)}.")
    if self.label_form not in LABEL_FORMS:
      raise ValueError(f"Unknown label_form {self.label_form!r}; valid: "
                       f"{', '.join(LABEL_FORMS)}.")
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

  @property
  def logit_scale(self) -> float | jax.Array:
    """The factor the loss applies to the logits: LDAM's s (cosine logits), else 1."""
    return self.scale if self.kind == "ldam" else 1.0

  def class_weights(self, counts: ArrayLike, epoch: ArrayLike) -> jax.Array | None:
    """DRW class weights at `epoch` (ones before drw_epoch), or None without DRW."""
    if self.drw_epoch is None:
      return None
    return losses.deferred_weights(counts, epoch, self.drw_epoch, self.beta)

  def loss(self, logits: ArrayLike, soft_labels: ArrayLike, counts: ArrayLike,
           weights: ArrayLike | None, sample_weights: ArrayLike | None = None) -> jax.Array:
    """The criterion's loss of one label set (soft or one-hot), with given class weights.

    `sample_weights` (scalar or (B,)) scale the numerator (`lam` for one side of a mixed
    batch); the focal loss, which has no class weights and is linear in the label, takes
    the soft label instead and ignores them.
    """
    if self.kind == "ce":
      return losses.soft_cross_entropy(logits, soft_labels, weights, self.reduction,
                                       sample_weights)
    if self.kind == "balanced_softmax":
      return losses.balanced_softmax_loss(logits, soft_labels, counts, weights,
                                          reduction=self.reduction,
                                          sample_weights=sample_weights)
    if self.kind == "ldam":
      margins = losses.ldam_margins(counts, self.max_margin)
      return losses.ldam_loss(logits, soft_labels, margins, self.scale, weights,
                              self.reduction, sample_weights)
    return losses.focal_loss(logits, soft_labels, self.focal_gamma)

  def compute(self, logits: ArrayLike, labels: mixing.MixedLabels, counts: ArrayLike,
              epoch: ArrayLike) -> jax.Array:
    """The loss of (possibly mixed) labels for class counts `counts` at `epoch`.

    Args:
      logits: (B, K) logits (cosines for LDAM).
      labels: the batch's MixedLabels (`MixedLabels.hard(y)` for a clean batch).
      counts: (K,) training images per class.
      epoch: current epoch (0-based, traced or concrete).

    Returns:
      Scalar loss (see the module table for the label forms and reductions).
    """
    weights = self.class_weights(counts, epoch)
    num_classes = jnp.shape(logits)[-1]
    if self.label_form == "soft" or self.kind == "focal":  # focal: linear in the label
      return self.loss(logits, labels.soft(num_classes), counts, weights)
    lam = jnp.asarray(labels.lam, jnp.float32)
    side = lambda y, s: self.loss(logits, jax.nn.one_hot(y, num_classes), counts, weights, s)
    return side(labels.labels_a, lam) + side(labels.labels_b, 1.0 - lam)

  def __call__(self, logits: ArrayLike, labels: mixing.MixedLabels, ctx) -> jax.Array:
    """The loss of a training step: counts and epoch come from the StepContext `ctx`."""
    return self.compute(logits, labels, ctx.class_counts, ctx.epoch)
