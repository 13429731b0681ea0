"""Empirical risk minimisation on the clean instance-balanced batch.

One recipe covers the non-mixing baselines through its criterion:

| registry name      | criterion                                  | source                 |
|--------------------|--------------------------------------------|------------------------|
| "erm"              | cross-entropy                              | ERM / CE               |
| "drw"              | cross-entropy + DRW from epoch 160 of 200  | Cao et al. 2019        |
| "ldam_drw"         | LDAM (normalised head) + DRW, 160 of 200   | Cao et al. 2019        |
| "balanced_softmax" | balanced softmax                           | BALMS, Ren et al. 2020 |
"""

from __future__ import annotations

import dataclasses

import jax

from ltjax import mixing, recipe
from ltjax.methods import common


@dataclasses.dataclass(frozen=True)
class ERM(common.SupervisedRecipe):
  """`L = criterion(f(x), y)` on the step's clean (augmented, instance-balanced) batch.

  Defaults: cross-entropy, no DRW (the registry's "drw" / "ldam_drw" start DRW at epoch
  160 of 200, Cao et al. 2019, rescaled to the run length).
  """
  name: str = "erm"

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    x, labels, indices = ctx.clean_batch(ctx.keys("clean")["clean"])
    loss, _, forward = self.supervised(forward, x, mixing.MixedLabels.hard(labels), ctx)
    return loss, recipe.LossOutput(forward, method_state, {}, {"indices": indices})
