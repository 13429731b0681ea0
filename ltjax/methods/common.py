"""Pieces shared by the method recipes: the criterion-driven base recipe and model calls.

A recipe (`ltjax.recipe.Recipe`) builds its batch, calls the model through a functional
`Forward` and returns a loss. Recipes whose loss is a `Criterion` (ERM, the mixup family,
LOBM, OTmix / CMO) derive from `SupervisedRecipe`, which ties the model head to the
criterion (LDAM needs the normalised head of Cao et al. 2019).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ltjax import mixing, recipe
from ltjax.methods import criteria

Outputs = recipe.Outputs


@dataclasses.dataclass(frozen=True)
class SupervisedRecipe(recipe.Recipe):
  """A recipe whose supervised loss is `criterion` (see `ltjax.methods.criteria`).

  The head is derived from the criterion: LDAM switches a "linear" head to "normalized";
  any other criterion keeps the head given.
  """
  criterion: criteria.Criterion = criteria.Criterion()

  def __post_init__(self):
    if not isinstance(self.criterion, criteria.Criterion):
      raise ValueError(f"criterion must be a Criterion, got {type(self.criterion).__name__}.")
    object.__setattr__(self, "head", self.criterion.required_head or self.head)

  def supervised(self, forward: recipe.Forward, x: jax.Array, labels: mixing.MixedLabels,
                 ctx: recipe.StepContext) -> tuple[jax.Array, Outputs, recipe.Forward]:
    """Runs the model (training mode) on `x` and applies the criterion to its logits."""
    outputs, forward = forward(x)
    return self.criterion(outputs["logits"], labels, ctx), outputs, forward


def inference_outputs(forward: recipe.Forward, x: jax.Array, **kwargs) -> Outputs:
  """Model outputs in inference mode (running BN statistics), without gradient.

  Used where a method needs the model's view of a batch to *choose* pairs (nearest
  neighbours, OT cost, confusion statistics): the choice must not be differentiated and
  must not update the batch statistics.
  """
  outputs, _ = forward._replace(train=False)(x, **kwargs)
  return jax.tree_util.tree_map(jax.lax.stop_gradient, outputs)


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
  """(B, K) float32 one-hot labels."""
  return recipe.soft_labels(labels, num_classes)


def take(x: jax.Array, index: jax.Array) -> jax.Array:
  """Rows `index` of `x` (partner gather)."""
  return jnp.take(x, index, axis=0)


def scaled_epoch(num_epochs: int, at: int, of: int) -> int:
  """Epoch `at` of an `of`-epoch paper schedule, rescaled to `num_epochs` (floor).

  E.g. DRW from epoch 160 of 200 is epoch 80 of a 100-epoch run.
  """
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}.")
  return num_epochs * at // of
