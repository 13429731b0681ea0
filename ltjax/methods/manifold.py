"""Manifold mixup (Verma et al. 2019): mixup of hidden states at a randomly drawn layer.

    k ~ U(layers),  lam ~ Beta(alpha, alpha),
    h_k = lam g_k(x_i) + (1 - lam) g_k(x_p(i)),  y = lam y_i + (1 - lam) y_p(i)

g_k is the network up to mixing layer k (0: the input, so k = 0 is input mixup; s: the
output of residual stage s); the rest of the network runs on the mixed h_k and the loss is
the criterion on the vanilla mixed label (one lambda and one layer per batch, a random
permutation as partner, as Verma et al.'s code). The model must accept
`mix=(layer, fn)` (ResNet-32 and SmallCNN do, `ltjax.models.resnet_cifar.Backbone`).

Defaults: layers (0, 1, 2), the input and the outputs of the first two residual stages,
drawn uniformly (Verma et al. 2019, sec. 5.1, CIFAR PreActResNets); alpha = 1, the mixing ratio
LOBM states for all its mixup baselines on CIFAR-LT (LOBM sec. 4.2), which compares against
manifold mixup in its Table 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ltjax import _checks, mixing, pairing, recipe
from ltjax.methods import common


def draw_layer(key: jax.Array, layers: tuple[int, ...]) -> jax.Array:
  """One mixing layer drawn uniformly from `layers` (int32 scalar)."""
  return jnp.asarray(layers, jnp.int32)[jax.random.randint(key, (), 0, len(layers))]


@dataclasses.dataclass(frozen=True)
class ManifoldMixup(common.SupervisedRecipe):
  """Manifold mixup with vanilla labels (see the module docstring).

  Attributes:
    alpha: Beta(alpha, alpha) of lambda (1.0: LOBM sec. 4.2, CIFAR-LT).
    layers: the eligible mixing layers, drawn uniformly (0: the input, s: the output of
      stage s; (0, 1, 2): Verma et al. 2019, sec. 5.1).
    criterion: supervised loss (default cross-entropy).
  """
  name: str = "manifold_mixup"
  alpha: float = 1.0
  layers: tuple[int, ...] = (0, 1, 2)

  def __post_init__(self):
    super().__post_init__()
    _checks.check_positive(self.alpha, "alpha")
    layers = tuple(self.layers)
    if not layers or len(set(layers)) != len(layers) or any(
        not isinstance(k, int) or k < 0 for k in layers):
      raise ValueError(f"layers must be distinct non-negative mixing layers, got {layers}.")
    object.__setattr__(self, "layers", layers)

  def requirements(self) -> recipe.Requirements:
    """A model that mixes hidden states at each of `layers` (`mix=` hook)."""
    return dataclasses.replace(super().requirements(), mix_layers=self.layers)

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("clean", "pair", "lam", "layer")
    x, labels, indices = ctx.clean_batch(keys["clean"])
    partner = pairing.random_pairs(keys["pair"], labels.shape[0])
    lam = mixing.sample_lambda(keys["lam"], self.alpha)
    layer = draw_layer(keys["layer"], self.layers)
    mix = (layer, lambda h: mixing.mix_inputs(h, common.take(h, partner), lam))
    outputs, forward = forward(x, mix=mix)
    mixed = mixing.MixedLabels(labels, common.take(labels, partner), lam)
    loss = self.loss_of(outputs, mixed, ctx)
    draws = {"indices": indices, "partner": partner, "lam": lam, "layer": layer}
    return loss, recipe.LossOutput(forward, method_state,
                                   {"lam": lam, "layer": layer.astype(jnp.float32)}, draws)
