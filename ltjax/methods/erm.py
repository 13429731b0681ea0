"""Empirical risk minimisation on a clean batch: instance-balanced, or drawn by a class law.

One recipe covers the non-mixing baselines through its criterion and its sampler:

| registry name      | criterion                                | batch                     |
|--------------------|------------------------------------------|---------------------------|
| "erm"              | cross-entropy                            | instance-balanced         |
| "drw"              | cross-entropy + DRW from 160 of 200      | instance-balanced         |
| "ldam_drw"         | LDAM (normalised head) + DRW, 160 of 200 | instance-balanced         |
| "balanced_softmax" | balanced softmax (BALMS, Ren et al. 2020)| instance-balanced         |
| "cb_sampling"      | cross-entropy                            | class-balanced            |
| "drs"              | cross-entropy                            | class-balanced from 160   |

DRW, LDAM and DRS: Cao et al. 2019. "cb_sampling" and "drs" are LOBM's "CB Samp." and
"CB Samp.*" rows (LOBM Tables 1 and 2, its references [8] and [9]).

Class-balanced sampling (Shen et al. 2016, LOBM's [8]): each example of the batch is drawn
with replacement, its class uniform over the K classes and the image uniform within the
class, P(x_i) = 1 / (K n_{y_i}) (`samplers.class_probs("class_balanced")`); an epoch keeps
its N / B steps. Deferred re-sampling (DRS, Cao et al. 2019 sec. 3.3) trains on the
instance-balanced batch until `defer_epoch` (the first LR decay, as LOBM*) and on the
class-balanced draw from it on: a `lax.cond` on the traced epoch, one compiled step.
"""

from __future__ import annotations

import dataclasses

import jax

from ltjax import mixing, recipe, samplers
from ltjax.methods import common


@dataclasses.dataclass(frozen=True)
class ERM(common.SupervisedRecipe):
  """`L = criterion(f(x), y)` on the step's clean (augmented) batch.

  Defaults: cross-entropy on the instance-balanced batch, no DRW (the registry's "drw" /
  "ldam_drw" start DRW at epoch 160 of 200, Cao et al. 2019, rescaled to the run length).

  Attributes:
    sampler: None, the epoch's instance-balanced batch; or a class law of
      `samplers.SAMPLERS` ("class_balanced" for CB Samp.) the batch is drawn by.
    defer_epoch: with a sampler: the instance-balanced batch for epochs < defer_epoch,
      the sampler's draw from it on (DRS); None: the sampler from the first epoch.
    criterion: supervised loss (cross-entropy).
  """
  name: str = "erm"
  sampler: str | None = None
  defer_epoch: int | None = None

  def __post_init__(self):
    super().__post_init__()
    if self.sampler is not None and self.sampler not in samplers.SAMPLERS:
      raise ValueError(f"Unknown sampler {self.sampler!r}; valid: None (the epoch's "
                       f"instance-balanced batch), {', '.join(samplers.SAMPLERS)}.")
    if self.sampler is None and self.defer_epoch is not None:
      raise ValueError("defer_epoch defers a sampler; set sampler= (e.g. 'class_balanced').")
    if self.defer_epoch is not None and (int(self.defer_epoch) != self.defer_epoch
                                         or self.defer_epoch < 0):
      raise ValueError(f"defer_epoch must be a non-negative integer or None, got "
                       f"{self.defer_epoch}.")

  @property
  def law(self) -> samplers.Law | None:
    """The class law of the batches (None: the instance-balanced epoch permutation)."""
    return None if self.sampler is None else samplers.Law(self.sampler)

  def requirements(self) -> recipe.Requirements:
    """A sampler's batches come from its class law."""
    needs = super().requirements()
    return needs if self.law is None else dataclasses.replace(needs, draws=(self.law,))

  def batch(self, ctx: recipe.StepContext, key: jax.Array) -> recipe.Batch:
    """The step's batch: instance-balanced, the sampler's draw, or DRS's switch."""
    if self.law is None:
      return ctx.clean_batch(key)
    if self.defer_epoch is None:
      return ctx.draw(key, self.law)
    return jax.lax.cond(ctx.epoch >= self.defer_epoch, lambda k: ctx.draw(k, self.law),
                        ctx.clean_batch, key)

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    x, labels, indices = self.batch(ctx, ctx.keys("clean")["clean"])
    loss, _, forward = self.supervised(forward, x, mixing.MixedLabels.hard(labels), ctx)
    return loss, recipe.LossOutput(forward, method_state, {}, {"indices": indices})
