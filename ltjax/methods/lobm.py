"""LOBM: label-occurrence-balanced mixup (Zhang et al. 2023), and its deferred form LOBM*.

Both sides of every pair are drawn by two independent class-balanced samplers from the
whole training set (eq. 4-5: class k with probability 1/K, then an image uniformly inside
the class), and mixed with vanilla mixup (lam ~ Beta(alpha, alpha), lam_y = lam). Every
class then occurs equally often on both sides of the pairs (label occurrence ratio ~1).

LOBM* ("Ours*", the deferred re-balancing version of the paper, after Cao et al. 2019):
plain in-batch mixup on the instance-balanced batch until `defer_epoch` (the first
learning-rate decay: epoch 160 of 200 on CIFAR), then LOBM. The switch is a `lax.cond`
on the traced epoch: one compiled step, only the active branch's batches are loaded.

Sound (ESC-50-LT, LOBM sec. 4.3): `input_mix="bc"` mixes the pair by between-class
learning's rule instead of mixup's (`ltjax.methods.mixup.mix_batch`, `ltjax.audio.bc_mix`).

Defaults: alpha = 1 (CIFAR, paper sec. 4.1; 0.2 on ImageNet-LT), cross-entropy. No public
reference code.
"""

from __future__ import annotations

import dataclasses

import jax

from ltjax import _checks, label_rules, pairing, recipe, samplers
from ltjax.methods import common, mixup

Pair = tuple[recipe.Batch, recipe.Batch]
# The two sides of every LOBM pair: independent class-balanced draws (eq. 4-5).
BALANCED_PAIR = (samplers.Law("class_balanced", copy=0), samplers.Law("class_balanced", copy=1))


def balanced_pair(ctx: recipe.StepContext, key: jax.Array) -> Pair:
  """Two independent class-balanced batches from the whole dataset."""
  key_a, key_b = jax.random.split(key)
  law_a, law_b = BALANCED_PAIR
  return ctx.draw(key_a, law_a), ctx.draw(key_b, law_b)


def in_batch_pair(ctx: recipe.StepContext, key: jax.Array) -> Pair:
  """The clean batch and a random permutation of it (plain mixup pairs)."""
  key_load, key_perm = jax.random.split(key)
  batch = ctx.clean_batch(key_load)
  partner = pairing.random_pairs(key_perm, batch.labels.shape[0])
  return batch, recipe.Batch(*(common.take(a, partner) for a in batch))


@dataclasses.dataclass(frozen=True)
class LOBM(common.SupervisedRecipe):
  """LOBM, or LOBM* when `defer_epoch` is set.

  Attributes:
    alpha: Beta(alpha, alpha) of lambda (1.0 on CIFAR, LOBM sec. 4.1).
    defer_epoch: None: LOBM from the first epoch; an epoch e: plain mixup for epochs < e,
      LOBM from e on (LOBM*; registry default = first LR decay, 160 of 200).
    per_sample_lambda: one lambda per sample (default one per batch).
    input_mix: "linear" (mixup) or "bc" (between-class learning on waveforms).
    sample_rate: the waveforms' sampling rate for input_mix="bc".
    criterion: supervised loss (cross-entropy).
  """
  name: str = "lobm"
  alpha: float = 1.0
  defer_epoch: int | None = None
  per_sample_lambda: bool = False
  input_mix: str = "linear"
  sample_rate: int = 16000

  def __post_init__(self):
    super().__post_init__()
    _checks.check_positive(self.alpha, "alpha")
    mixup.check_input_mix(self.input_mix, self.sample_rate)
    if self.defer_epoch is not None and (int(self.defer_epoch) != self.defer_epoch
                                         or self.defer_epoch < 0):
      raise ValueError(f"defer_epoch must be a non-negative integer or None, got "
                       f"{self.defer_epoch}.")

  def requirements(self) -> recipe.Requirements:
    """Both sides of the pairs are class-balanced draws."""
    return dataclasses.replace(super().requirements(), draws=BALANCED_PAIR)

  def pair(self, ctx: recipe.StepContext, key: jax.Array) -> Pair:
    """The step's pair of batches: balanced (LOBM) or in-batch before `defer_epoch`."""
    if self.defer_epoch is None:
      return balanced_pair(ctx, key)
    return jax.lax.cond(ctx.epoch >= self.defer_epoch, lambda k: balanced_pair(ctx, k),
                        lambda k: in_batch_pair(ctx, k), key)

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("pair", "lam")
    a, b = self.pair(ctx, keys["pair"])
    mixed = mixup.mix_batch(keys["lam"], a.x, a.labels, b.x, b.labels, ctx.class_counts,
                            alpha=self.alpha, rule=label_rules.vanilla,
                            per_sample=self.per_sample_lambda, input_mix=self.input_mix,
                            sample_rate=self.sample_rate)
    loss, _, forward = self.supervised(forward, mixed.x, mixed.labels, ctx)
    draws = {"indices_a": a.indices, "indices_b": b.indices, "lam": mixed.lam}
    return loss, recipe.LossOutput(forward, method_state, {"lam": mixed.lam.mean()}, draws)
