"""Mixed precision for any ltjax model: float32 parameters, low-precision compute.

`MixedPrecision(model, dtype)` runs `model` with its parameters and floating inputs cast
to `dtype` (bfloat16 on TPUs and recent GPUs) and returns float32 outputs, so the loss,
the gradients' accumulation into the float32 parameters (the cast's VJP casts them back)
and the optimiser stay in float32 (Micikevicius et al. 2018, "Mixed precision training",
section 3; bfloat16 needs no loss scaling). BatchNorm keeps float32 running statistics:
Flax computes batch statistics in at least float32.

The wrapper shares its scope with the wrapped model: the variables have exactly the
model's tree and initial values (initialisation runs the model in float32), so
checkpoints, trainable masks (`optim.path_mask`) and pretrained weights are the same as
without it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def cast_floating(tree: Any, dtype: Any) -> Any:
  """Every floating array leaf of `tree` cast to `dtype`; other leaves unchanged."""
  return jax.tree.map(
      lambda a: jnp.asarray(a, dtype) if hasattr(a, "dtype")
      and jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def compute_dtype(name: str) -> Any:
  """The jnp dtype named `name` ("float32", "bfloat16" or "float16")."""
  if name not in DTYPES:
    raise ValueError(f"Unknown compute dtype {name!r}; valid dtypes: {', '.join(DTYPES)}.")
  return DTYPES[name]


class MixedPrecision(nn.Module):
  """`model` computed in `dtype` with float32 parameters and outputs.

  Attributes:
    model: any ltjax model (`__call__(x, train, **kwargs) -> dict of arrays`).
    dtype: compute dtype, e.g. `jnp.bfloat16`.
  """
  model: nn.Module
  dtype: Any = jnp.bfloat16

  def setup(self):
    nn.share_scope(self, self.model)

  @property
  def head(self) -> str | None:
    """The wrapped model's head kind (what `methods.check_compatible` reads)."""
    return getattr(self.model, "head", None)

  def __call__(self, x: jax.Array, train: bool, **kwargs: Any) -> dict[str, jax.Array]:
    if self.is_initializing():
      return self.model(x, train, **kwargs)
    low = nn.map_variables(
        lambda module, *args, **kw: module(*args, **kw), "params",
        trans_in_fn=lambda params: cast_floating(params, self.dtype))
    outputs = low(self.model, cast_floating(x, self.dtype), train,
                  **cast_floating(kwargs, self.dtype))
    return cast_floating(outputs, jnp.float32)
