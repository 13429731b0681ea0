"""Batched inference on a test set: logits and the metrics of `ltjax.metrics`.

The model runs in inference mode (BatchNorm running statistics) on fixed-size batches, so one
compilation serves the whole set; the last batch is filled up by repeating the last image and
the extra rows are dropped. Logits come from `recipe.logits(outputs)`, so dual-branch models
average their branches and training-only adjustments (temperatures, priors) never apply.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.typing import ArrayLike

from ltjax import metrics
from ltjax import recipe as recipe_lib
from ltjax.training import loop

PyTree = Any
EvalFn = Callable[[PyTree, PyTree, ArrayLike], np.ndarray]


def make_eval_fn(apply_fn: Callable[..., Any], recipe: recipe_lib.Recipe, batch_size: int,
                 normalize_fn: Callable[[jax.Array], jax.Array]) -> EvalFn:
  """Builds `eval_fn(params, batch_stats, images) -> logits`.

  Args:
    apply_fn: the model's `apply`.
    recipe: gives the inference logits (`recipe.logits`).
    batch_size: images per compiled call.
    normalize_fn: `uint8 images -> float32 inputs` (no augmentation at test time).

  Returns:
    A function of params, batch_stats and (N, H, W, C) uint8 images (host or device) that
    returns (N, K) float32 numpy logits.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

  # The recipe and the normalisation are arguments (their numbers are not constants of
  # the executable: another run of the same model reuses it).
  inputs = jax.device_put((recipe, loop.as_input(normalize_fn)))

  @jax.jit
  def batch_logits(inputs: tuple[recipe_lib.Recipe, Any], params: PyTree,
                   batch_stats: PyTree, images: jax.Array) -> jax.Array:
    recipe, normalize = inputs
    forward = recipe_lib.Forward(apply_fn, params, batch_stats, train=False)
    outputs, _ = forward(normalize(images))
    return recipe.logits(outputs)

  def eval_fn(params: PyTree, batch_stats: PyTree, images: ArrayLike) -> np.ndarray:
    num = images.shape[0]
    chunks = []
    for start in range(0, num, batch_size):
      rows = np.minimum(np.arange(start, start + batch_size), num - 1)
      logits = batch_logits(inputs, params, batch_stats, images[rows])
      chunks.append(np.asarray(logits)[:min(batch_size, num - start)])
    return np.concatenate(chunks).astype(np.float32)

  return eval_fn


def evaluate(eval_fn: EvalFn, params: PyTree, batch_stats: PyTree, images: ArrayLike,
             labels: ArrayLike, train_counts: ArrayLike) -> dict[str, Any]:
  """Test metrics of the model on `images`, `labels`, with groups from the training counts.

  Returns:
    `ltjax.metrics.evaluate_logits` (top1, top5, per_class, many / medium / few, confusion)
    and `loss`, the mean cross-entropy of the test logits.
  """
  logits = eval_fn(params, batch_stats, images)
  labels = np.asarray(labels)
  result = metrics.evaluate_logits(logits, labels, np.asarray(train_counts))
  return {**result, "loss": mean_cross_entropy(logits, labels)}


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean of -log softmax(logits)[label] over the rows (float64 on the host)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  log_norm = np.log(np.exp(z).sum(axis=1))
  return float(np.mean(log_norm - z[np.arange(z.shape[0]), labels]))
