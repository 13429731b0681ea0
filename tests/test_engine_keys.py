"""Engine items not covered by test_engine.py, each against first principles.

- `Recipe.begin_epoch` gets `fold_in(fold_in(key(seed), 3), global_epoch)` (`run_keys`:
  init, permutation, step, epoch = fold_in(key(seed), 0..3)) and the phase epoch;
- one training step moves the BatchNorm running statistics by `r <- 0.9 r + 0.1 batch`
  (float64 numpy convolution of the step's batch), and not at all with
  `train_batch_stats=False`;
- a DRW `beta` given to `get_recipe` sets the class weights of the loss the engine trains.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import methods
from ltjax import recipe as recipe_lib
from ltjax import training
from ltjax.models import get_model
from ltjax.training import loop, optim
from test_engine import IMAGES, LABELS, SEED, K, Probe, normalize, run_epochs

BN_PATH = ("backbone", "stage0", "block0")


@dataclasses.dataclass(frozen=True)
class EpochProbe(Probe):
  """Probe whose `begin_epoch` stores a uniform drawn from its key and the epoch it got;
  every step logs them."""
  name: str = "epoch_probe"

  def init_state(self, class_counts):
    return {"u": jnp.float32(-1.0), "epoch": jnp.int32(-1)}

  def on_epoch(self, method_state, ctx):
    return {"u": jax.random.uniform(ctx.key), "epoch": ctx.epoch}

  def loss(self, forward, ctx, method_state):
    loss, out = super().loss(forward, ctx, method_state)
    metrics = {**out.metrics, "hook_u": method_state["u"], "hook_epoch": method_state["epoch"]}
    return loss, out._replace(metrics=metrics)


@pytest.mark.parametrize("loop_name", ["steps", "scan"])
def test_begin_epoch_key_is_the_epoch_key_folded_with_the_global_epoch(loop_name):
  offset = 3  # a later phase: its epoch 0 is the run's epoch 3
  _, history = run_epochs(EpochProbe(), 2, offset, loop_name)
  epoch_key = jax.random.fold_in(jax.random.key(SEED), 3)
  for e, metrics in enumerate(history):
    want = np.float32(jax.random.uniform(jax.random.fold_in(epoch_key, offset + e)))
    np.testing.assert_array_equal(metrics["hook_u"], want)
    np.testing.assert_array_equal(metrics["hook_epoch"], e)  # the recipe's phase epoch


def conv_moments(x: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and biased variance of a 3x3, stride-1, zero-padded, bias-free
  cross-correlation, in float64."""
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = sum(padded[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
          for dy in range(3) for dx in range(3))
  return y.mean((0, 1, 2)), y.var((0, 1, 2))


def one_step(recipe_, labels, indices, **step_kw):
  """The state before, and the state and metrics after, one engine step on `indices`."""
  model = get_model("small_cnn", K, widths=(4,))
  data = recipe_lib.DeviceDataset.from_arrays(IMAGES, labels, K)
  tx = optim.sgd(0.1)
  state = training.create_state(model, recipe_, tx, jnp.zeros((1, 6, 6, 1)),
                                training.run_keys(SEED).init, np.bincount(labels))
  step = jax.jit(loop.make_train_step(recipe_, model.apply, tx, batch_size=len(indices),
                                      num_epochs=2, augment_fn=None, normalize_fn=normalize,
                                      seed=SEED, **step_kw))
  new_state, metrics, _ = step(state, data, jnp.int32(0), jnp.asarray(indices, jnp.int32))
  return model, state, new_state, metrics


def subtree(tree, path):
  for name in path:
    tree = tree[name]
  return tree


@pytest.mark.parametrize("train_batch_stats", [True, False])
def test_one_step_moves_batch_statistics_by_the_momentum_rule(train_batch_stats):
  indices = np.array([3, 17, 22, 8, 31, 0, 39, 12])
  _, before, after, _ = one_step(Probe(), LABELS, indices,
                                 train_batch_stats=train_batch_stats)
  old = subtree(before.batch_stats, BN_PATH + ("bn",))
  new = subtree(after.batch_stats, BN_PATH + ("bn",))
  if not train_batch_stats:
    jax.tree.map(np.testing.assert_array_equal, after.batch_stats, before.batch_stats)
    return
  x = IMAGES[indices].astype(np.float64) / 255.0 - 0.5
  kernel = np.asarray(subtree(before.params, BN_PATH + ("conv", "kernel")), np.float64)
  mean, var = conv_moments(x, kernel)
  np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * mean,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * var,
                             rtol=1e-4, atol=1e-6)


def np_drw_cross_entropy(logits: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                         beta: float) -> float:
  """F.cross_entropy(z, y, weight=w), w_k = (1 - beta) / (1 - beta^n_k) summing to K."""
  w = (1 - beta) / (1 - beta ** counts.astype(np.float64))
  w = w / w.sum() * len(counts)
  z = logits.astype(np.float64)
  z = z - z.max(1, keepdims=True)
  nll = np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]
  return float((w[labels] * nll).sum() / w[labels].sum())


@pytest.mark.parametrize("beta", [0.9, 0.99])
def test_drw_beta_override_sets_the_class_weights_of_the_trained_loss(beta):
  labels = np.repeat(np.arange(K), [20, 10, 6, 4]).astype(np.int32)  # long-tailed
  counts = np.bincount(labels)
  indices = np.array([0, 5, 21, 25, 31, 33, 37, 39])  # classes 0 0 1 1 2 2 3 3
  recipe_ = methods.get_recipe("drw", num_epochs=2, drw_epoch=0, beta=beta)
  model, state, _, metrics = one_step(recipe_, labels, indices)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  outputs, _ = model.apply(variables, normalize(IMAGES[indices]), train=True,
                           mutable=["batch_stats"])
  logits = np.asarray(outputs["logits"])
  want = np_drw_cross_entropy(logits, labels[indices], counts, beta)
  default = np_drw_cross_entropy(logits, labels[indices], counts, 0.9999)
  rtol = 1e-5
  assert abs(want - default) > 10 * rtol * want  # the override changes the loss
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=rtol)
