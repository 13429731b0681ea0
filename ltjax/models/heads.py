"""Classifier heads: linear and normalised linear (cosine) classifiers.

Every ltjax model ends in one of these heads on its pooled features `z` (B, D):

| kind            | logits                                   | used by                         |
|-----------------|------------------------------------------|---------------------------------|
| "linear"        | z @ W + b                                | ERM, mixup, DBN-Mix, CP-Mix ... |
| "linear_nobias" | z @ W                                    | ablations                       |
| "normalized"    | normalize(z) @ normalize(W, axis=0)      | LDAM (Cao et al. 2019)          |

Initialisation: the linear heads use He-normal (fan-in, untruncated normal, std
sqrt(2 / D)) weights and zero bias, like `init.kaiming_normal_` in the LDAM-DRW ResNet-32
code that the CIFAR long-tail papers reuse. The normalised head draws W uniformly in
[-1, 1) and rescales every class column to unit norm, like LDAM's `NormedLinear`
(`uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`): the forward pass does not depend on the
column norms, but the gradient w.r.t. a column scales with 1 / its norm, so the norm at
initialisation sets the head's effective learning rate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

HEADS = ("linear", "linear_nobias", "normalized")

HE_NORMAL_FAN_IN = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def check_head(kind: str) -> None:
  """Raises ValueError unless `kind` names a head in HEADS."""
  if kind not in HEADS:
    raise ValueError(f"Unknown head {kind!r}; valid heads: {', '.join(HEADS)}.")


def l2_normalize(x: jax.Array, axis: int, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) along `axis` (torch.nn.functional.normalize)."""
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, eps)


def unit_column_uniform(key: jax.Array, shape: tuple[int, ...],
                        dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """U[-1, 1) draws with every column (last axis index) rescaled to unit L2 norm.

  LDAM's `NormedLinear` initialisation (Cao et al. 2019).
  """
  w = jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)
  return l2_normalize(w, axis=0)


class LinearHead(nn.Module):
  """Affine classifier `logits = z @ W (+ b)`.

  Attributes:
    num_classes: K.
    use_bias: add a bias vector b (zero-initialised).
  """
  num_classes: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes, use_bias=self.use_bias,
                    kernel_init=HE_NORMAL_FAN_IN, name="fc")(z)


class NormalizedLinear(nn.Module):
  """Cosine classifier of LDAM (Cao et al. 2019): `logits = normalize(z) @ normalize(W, axis=0)`.

  Each logit is the cosine between the feature and a class weight column, so it lies in
  [-1, 1]; the LDAM loss subtracts the class margin and multiplies by its scale s.

  Attributes:
    num_classes: K.
  """
  num_classes: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    kernel = self.param("kernel", unit_column_uniform, (z.shape[-1], self.num_classes))
    return l2_normalize(z, axis=-1) @ l2_normalize(kernel, axis=0)


def make_head(kind: str, num_classes: int, *, name: str | None = None) -> nn.Module:
  """The classifier head named `kind` ("linear", "linear_nobias" or "normalized")."""
  check_head(kind)
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if kind == "normalized":
    return NormalizedLinear(num_classes, name=name)
  return LinearHead(num_classes, use_bias=kind == "linear", name=name)


def head_outputs(features: jax.Array, kind: str, num_classes: int) -> dict[str, jax.Array]:
  """Applies a head named "head" (inside a compact method): {"logits", "features"}."""
  logits = make_head(kind, num_classes, name="head")(features)
  return {"logits": logits, "features": features}


def global_avg_pool(x: jax.Array) -> jax.Array:
  """(B, H, W, C) feature map -> (B, C) spatial mean."""
  return jnp.mean(x, axis=(1, 2))


def pooled_outputs(feature_map: jax.Array, kind: str, num_classes: int
                   ) -> dict[str, jax.Array]:
  """Pooling and a head named "head" on a last-stage map (inside a compact method).

  Returns {"logits": (B, K), "features": (B, C) pooled, "feature_map": (B, H, W, C)}; the
  un-pooled map is what the OTmix CIFAR code compares for its OT cost.
  """
  return {**head_outputs(global_avg_pool(feature_map), kind, num_classes),
          "feature_map": feature_map}
