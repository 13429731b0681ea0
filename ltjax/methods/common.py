"""Pieces shared by the method recipes: the criterion-driven base recipe and model calls.

A recipe (`ltjax.recipe.Recipe`) builds its batch, calls the model through a functional
`Forward` and returns a loss. Recipes whose loss is a `Criterion` (ERM, the mixup family,
LOBM, OTmix / CMO) derive from `SupervisedRecipe`, which ties the model head to the
criterion (LDAM needs the normalised head of Cao et al. 2019). `SupervisedRecipe.loss_of`
is the one place where a criterion meets the model outputs: with a multi-expert model
(outputs "expert_logits") it is RIDE's loss (`ltjax.methods.ride`: the criterion per
expert plus the distribution-aware diversity term), so every such recipe trains RIDE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ltjax import mixing, recipe
from ltjax.methods import criteria, ride as ride_lib

Outputs = recipe.Outputs


@dataclasses.dataclass(frozen=True)
class SupervisedRecipe(recipe.Recipe):
  """A recipe whose supervised loss is `criterion` (see `ltjax.methods.criteria`).

  The head is derived from the criterion: LDAM switches a "linear" head to "normalized";
  any other criterion keeps the head given.

  Attributes:
    criterion: the supervised loss.
    ride: RIDE's diversity-loss hyperparameters (`ltjax.methods.ride.RIDE`, defaults of
      RIDE's CIFAR config), used when the model outputs "expert_logits";
      `ride.multi_expert=True` (the registry's RIDE methods) makes the recipe require such
      a model (`Requirements.experts`).
  """
  criterion: criteria.Criterion = criteria.Criterion()
  ride: ride_lib.RIDE = ride_lib.RIDE()

  def __post_init__(self):
    if not isinstance(self.criterion, criteria.Criterion):
      raise ValueError(f"criterion must be a Criterion, got {type(self.criterion).__name__}.")
    if not isinstance(self.ride, ride_lib.RIDE):
      raise ValueError(f"ride must be a ltjax.methods.ride.RIDE, got "
                       f"{type(self.ride).__name__}.")
    object.__setattr__(self, "head", self.criterion.required_head or self.head)

  def requirements(self) -> recipe.Requirements:
    """Branches and head; configured for RIDE, a multi-expert model with frozen routers and
    the routing stage as extra phase (`ride.phase_requirements`)."""
    return dataclasses.replace(super().requirements(),
                               **ride_lib.phase_requirements(self.ride, self.head))

  def loss_of(self, outputs: Outputs, labels: mixing.MixedLabels, ctx: recipe.StepContext
              ) -> jax.Array:
    """The criterion on the model outputs: on "logits", or RIDE's loss on "expert_logits"
    (`ride.supervised_loss`, with the criterion's logit scale for the diversity term)."""
    return ride_lib.supervised_loss(outputs, lambda z: self.criterion(z, labels, ctx), self.ride,
                                ctx.class_counts, ctx.epoch, self.criterion.logit_scale)

  def supervised(self, forward: recipe.Forward, x: jax.Array, labels: mixing.MixedLabels,
                 ctx: recipe.StepContext) -> tuple[jax.Array, Outputs, recipe.Forward]:
    """Runs the model (training mode) on `x` and applies the criterion (`loss_of`)."""
    outputs, forward = forward(x)
    return self.loss_of(outputs, labels, ctx), outputs, forward


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
