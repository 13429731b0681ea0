"""The training engine against first principles, not against another ltjax run.

- every step's key is `fold_in(fold_in(key(seed), 2), global_step)` and every epoch's
  permutation is keyed by `fold_in(fold_in(key(seed), 1), global_epoch)` (`run_keys`:
  init, permutation, step, epoch = fold_in(key(seed), 0..3)), in every phase;
- BatchNorm running statistics move during training and stay fixed where frozen;
- a run resumed from a checkpoint of each phase (CP-Mix's main phase, its end, and inside
  its classifier fine-tuning, whose optimiser state and method state differ from the main
  phase's) continues bit-identically.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import methods, mixing
from ltjax import recipe as recipe_lib
from ltjax import training
from ltjax.models import get_model
from ltjax.training import optim, trainer

K, N, B, SEED = 4, 40, 8, 7
LABELS = (np.arange(N) % K).astype(np.int32)
IMAGES = np.random.default_rng(0).integers(0, 256, (N, 6, 6, 1), np.uint8)


def normalize(images):
  return images.astype(jnp.float32) / 255.0 - 0.5


def data():
  return recipe_lib.DeviceDataset.from_arrays(IMAGES, LABELS, K)


@dataclasses.dataclass(frozen=True)
class Probe(recipe_lib.Recipe):
  """ERM that logs a uniform number drawn from the step key and the clean indices."""
  name: str = "probe"

  def loss(self, forward, ctx, method_state):
    x, labels, indices = ctx.clean_batch(ctx.keys("clean")["clean"])
    outputs, forward = forward(x)
    loss = methods.Criterion()(outputs["logits"], mixing.MixedLabels.hard(labels), ctx)
    metrics = {"u": jax.random.uniform(ctx.key), "indices": indices, "step": ctx.step,
               "epoch": ctx.epoch}
    return loss, recipe_lib.LossOutput(forward, method_state, metrics)


def run_epochs(recipe, epochs, offset, loop, train_batch_stats=True, state=None):
  model = get_model("small_cnn", K, widths=(4,))
  tx = optim.sgd(0.1)
  if state is None:
    state = training.create_state(model, recipe, tx, jnp.zeros((1, 6, 6, 1)),
                                  training.run_keys(SEED).init, np.bincount(LABELS))
  train_epoch = training.make_train_epoch(
      recipe, model.apply, tx, data(), batch_size=B, num_epochs=epochs, augment_fn=None,
      normalize_fn=normalize, seed=SEED, epoch_offset=offset, loop=loop,
      train_batch_stats=train_batch_stats)
  history = []
  for e in range(epochs):
    state, metrics = train_epoch(state, e)
    history.append(jax.tree.map(np.asarray, metrics))
  return state, history


@pytest.mark.parametrize("loop", ["steps", "scan"])
def test_step_keys_and_epoch_permutations_follow_the_global_counters(loop):
  offset = 3  # a second phase: its epoch 0 is the run's epoch 3, its steps continue
  state, _ = run_epochs(Probe(), 1, 0, loop)
  _, history = run_epochs(Probe(), 2, offset, loop, state=state)
  root = jax.random.key(SEED)
  step_key = jax.random.fold_in(root, 2)
  perm_key = jax.random.fold_in(root, 1)
  steps = N // B
  for e, metrics in enumerate(history):
    global_steps = steps * (1 + e) + np.arange(steps)
    np.testing.assert_array_equal(metrics["step"], global_steps)
    np.testing.assert_array_equal(metrics["epoch"], e)  # the recipe sees the phase epoch
    want_u = [float(jax.random.uniform(jax.random.fold_in(step_key, int(t))))
              for t in global_steps]
    np.testing.assert_array_equal(metrics["u"], np.asarray(want_u, np.float32))
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(perm_key, offset + e), N))
    np.testing.assert_array_equal(metrics["indices"], perm[:steps * B].reshape(steps, B))
  # Distinct steps draw distinct numbers.
  u = np.concatenate([m["u"] for m in history])
  assert len(np.unique(u)) == u.size


def test_batch_statistics_move_in_training_and_stay_fixed_when_frozen():
  start, _ = run_epochs(Probe(), 1, 0, "steps")
  copy = lambda: jax.tree.map(jnp.copy, start)  # the epoch donates its state argument
  trained, _ = run_epochs(Probe(), 1, 1, "steps", state=copy())
  frozen, _ = run_epochs(Probe(), 1, 1, "steps", state=copy(), train_batch_stats=False)
  for before, after, fixed in zip(jax.tree.leaves(start.batch_stats),
                                  jax.tree.leaves(trained.batch_stats),
                                  jax.tree.leaves(frozen.batch_stats)):
    assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(fixed), np.asarray(before))
  # The parameters trained in both cases.
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(frozen.params), jax.tree.leaves(start.params))]
  assert min(moved) > 0


def cp_mix_fit(workdir=None, stop_after=None):
  cp = methods.get_recipe("cp_mix", num_epochs=2, stage2_epoch=1)
  phases = [training.Phase(cp, 2, optim.sgd(0.05)),
            training.Phase(methods.CPMixFinetune(), 3,
                           optim.sgd(0.05, trainable=optim.path_mask(("head",))),
                           train_batch_stats=False)]
  return training.fit(get_model("small_cnn", K, widths=(4,)), phases, data(),
                      batch_size=B, seed=SEED, normalize_fn=normalize, workdir=workdir,
                      progress=False, stop_after=stop_after, loop="steps")


def test_resume_from_every_phase_is_bit_identical(tmp_path):
  """Stops after epoch 1 (main phase, CP-Mix stage 2 next), 2 (the phase boundary) and 3
  (inside the fine-tuning phase), each time resuming from the checkpoint just written."""
  full = cp_mix_fit()
  cuts = {}
  for stop in (1, 2, 3):
    cuts[stop] = cp_mix_fit(tmp_path, stop_after=stop)
    assert cuts[stop].epochs_done == stop
  resumed = cp_mix_fit(tmp_path)
  assert resumed.epochs_done == 5
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(same, resumed.state, full.state)
  # The fine-tuning phase trained the head only, with the BatchNorm statistics frozen.
  jax.tree.map(same, full.state.params["backbone"], cuts[2].state.params["backbone"])
  jax.tree.map(same, full.state.batch_stats, cuts[2].state.batch_stats)
  assert not np.array_equal(full.state.params["head"]["fc"]["kernel"],
                            cuts[3].state.params["head"]["fc"]["kernel"])


def test_step_context_sub_keys_are_distinct_fold_ins_by_position():
  key = jax.random.key(5)
  ctx = recipe_lib.StepContext(key=key, step=jnp.int32(0), epoch=jnp.int32(0), num_epochs=1,
                               batch_size=B, clean_indices=jnp.arange(B), data=data(),
                               load=None)
  keys = ctx.keys("clean", "pair", "lam")
  raw = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys.values()]
  assert len(set(raw)) == 3
  for i, k in enumerate(keys.values()):
    np.testing.assert_array_equal(jax.random.key_data(k),
                                  jax.random.key_data(jax.random.fold_in(key, i)))


class EpochLog:
  def __init__(self):
    self.rows = []

  def on_epoch_end(self, epoch, train, evaluated):
    self.rows.append((epoch, train["epoch"], train["step"]))


def test_fit_gives_each_phase_its_local_epoch_and_the_global_step():
  log = EpochLog()
  phases = [training.Phase(Probe(), 2, optim.sgd(0.05)),
            training.Phase(Probe(), 2, optim.sgd(0.05))]
  training.fit(get_model("small_cnn", K, widths=(4,)), phases, data(), batch_size=B,
               seed=SEED, normalize_fn=normalize, progress=False, loop="steps",
               callbacks=[log])
  steps = N // B
  assert [r[0] for r in log.rows] == [0, 1, 2, 3]  # global epochs
  assert [r[1] for r in log.rows] == [0, 1, 0, 1]  # the recipe sees its phase's epoch
  # The epoch mean of the global step: steps continue across the phase boundary.
  assert [r[2] for r in log.rows] == [e * steps + (steps - 1) / 2 for e in range(4)]


def test_best_evaluation_is_the_highest_top1_not_the_last():
  progress = trainer._Progress()  # pylint: disable=protected-access
  for epoch, top1 in enumerate([0.5, None, 0.7, 0.6]):
    progress.record(epoch, {"loss": 1.0}, None if top1 is None else {"top1": top1})
  assert (progress.best_epoch, progress.best["top1"], progress.final["top1"]) == (2, 0.7, 0.6)
