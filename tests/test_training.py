"""Tests of the training engine (state, schedules, optimiser, compiled epoch, fit)."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import augment
from ltjax import recipe as recipe_lib
from ltjax import training
from ltjax.training import optim, schedules
from ltjax.training.checkpoint import Checkpointer

NUM_CLASSES = 4
BATCH = 16
SEED = 3


class TinyNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> mean pool -> linear head (module "head")."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    x = nn.Conv(6, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    features = nn.relu(x).mean(axis=(1, 2))
    return {"logits": nn.Dense(NUM_CLASSES, name="head")(features), "features": features}


TRACES = []


@dataclasses.dataclass(frozen=True)
class TinyERM(recipe_lib.Recipe):
  """Cross-entropy on the clean batch; optionally a nan loss at one global step."""
  name: str = "tiny_erm"
  nan_step: int = -1

  def loss(self, forward, ctx, method_state):
    TRACES.append(1)
    x, y, _ = ctx.clean_batch(ctx.keys("clean")["clean"])
    outputs, forward = forward(x)
    logits = outputs["logits"]
    loss = optax.softmax_cross_entropy(
        logits, recipe_lib.soft_labels(y, ctx.num_classes)).mean()
    loss = jnp.where(ctx.step == self.nan_step, jnp.nan, loss)
    acc = (logits.argmax(-1) == y).mean()
    return loss, recipe_lib.LossOutput(forward, method_state, {"acc": acc})


def normalize(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0 - 0.5


def augment_fn(key: jax.Array, images: jax.Array) -> jax.Array:
  return augment.random_crop_flip(key, images, pad=1)


def tiny_data(num: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (num, 8, 8, 3) images whose mean colour encodes the class, plus labels."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % NUM_CLASSES
  colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
  images = colours[labels][:, None, None, :] + rng.integers(-30, 30, (num, 8, 8, 3))
  return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int32)


def device_dataset(num: int = 64) -> recipe_lib.DeviceDataset:
  images, labels = tiny_data(num)
  return recipe_lib.DeviceDataset.from_arrays(images, labels, NUM_CLASSES)


def init_state(recipe, tx, data):
  return training.create_state(TinyNet(), recipe, tx, normalize(data.images[:1]),
                               training.run_keys(SEED).init, data.class_counts)


def epoch_fn(recipe, tx, data, num_epochs=5, **kw):
  return training.make_train_epoch(recipe, TinyNet().apply, tx, data, batch_size=BATCH,
                                   num_epochs=num_epochs, augment_fn=augment_fn,
                                   normalize_fn=normalize, seed=SEED, **kw)


def assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               a, b)


# --- schedules -------------------------------------------------------------------------


def ldam_reference_lr(epoch: int, base: float, warmup: int, milestones, factors) -> float:
  """LDAM-DRW / ImbalancedDL adjust_learning_rate, with its 1-based epoch counter."""
  epoch = epoch + 1
  if epoch <= warmup:
    return base * epoch / warmup
  factor = 1.0
  for m, f in zip(milestones, factors):
    if epoch > m:
      factor = f
  return base * factor


@pytest.mark.parametrize("factors,gamma,expect", [
    ((0.01, 1e-4), 0.1, (0.01, 1e-4)),   # MAMix / ImbalancedDL
    (None, 0.1, (0.1, 0.01)),            # DBN-Mix: x0.1 at 160 and 180
])
def test_warmup_multistep_matches_reference(factors, gamma, expect):
  spe = 3
  sched = schedules.warmup_multistep(0.1, spe, 5, (160, 180), factors, gamma)
  steps = np.arange(200 * spe)
  got = np.asarray(jax.jit(jax.vmap(sched))(steps))
  want = np.array([ldam_reference_lr(s // spe, 0.1, 5, (160, 180), expect) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[0] == pytest.approx(0.02) and got[4 * spe] == pytest.approx(0.1)


def test_warmup_cosine_closed_form():
  spe, warm, total, base, final = 4, 2, 10, 0.2, 0.01
  sched = schedules.warmup_cosine(base, spe, warm, total, final)
  for step in range(total * spe + 3):
    if step < warm * spe:
      want = base * (step // spe + 1) / warm
    else:
      t = min(step - warm * spe, (total - warm) * spe) / ((total - warm) * spe)
      want = final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))
    assert float(sched(step)) == pytest.approx(want, rel=1e-5)


def test_schedule_errors():
  with pytest.raises(ValueError, match="milestones"):
    schedules.warmup_multistep(0.1, 3, 5, (180, 160))
  with pytest.raises(ValueError, match="one factor per milestone"):
    schedules.warmup_multistep(0.1, 3, 5, (160, 180), (0.1,))
  with pytest.raises(ValueError, match="steps_per_epoch"):
    schedules.warmup_multistep(0.1, 0, 5, (160,))
  with pytest.raises(ValueError, match="total_epochs"):
    schedules.warmup_cosine(0.1, 3, 5, 5)
  with pytest.raises(ValueError, match="Unknown schedule"):
    schedules.get_schedule("linear", base_lr=0.1)
  assert float(schedules.get_schedule("constant", base_lr=0.5)(7)) == 0.5


# --- optimiser -------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_pytorch_update_rule(nesterov):
  mu, wd, lrs = 0.9, 0.05, [0.1, 0.2, 0.05, 0.3]
  tx = optim.sgd(lambda t: jnp.asarray(lrs)[t], momentum=mu, nesterov=nesterov,
                 weight_decay=wd)
  rng = np.random.default_rng(0)
  theta = rng.normal(size=5)
  grads = rng.normal(size=(4, 5))
  params, opt_state = jnp.asarray(theta, jnp.float32), None
  opt_state = tx.init(params)
  buf = None
  for t in range(4):
    g = grads[t] + wd * theta                          # torch.optim.SGD, float64
    buf = g if buf is None else mu * buf + g
    theta = theta - lrs[t] * (g + mu * buf if nesterov else buf)
    updates, opt_state = tx.update(jnp.asarray(grads[t], jnp.float32), opt_state, params)
    params = optax.apply_updates(params, updates)
    assert float(optim.current_lr(opt_state)) == pytest.approx(lrs[t])
  np.testing.assert_allclose(np.asarray(params), theta, rtol=1e-5)


def test_sgd_errors_and_path_mask():
  with pytest.raises(ValueError, match="nesterov"):
    optim.sgd(0.1, momentum=0.0, nesterov=True)
  with pytest.raises(ValueError, match="weight_decay"):
    optim.sgd(0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match="at least one"):
    optim.path_mask(())
  params = {"Conv_0": {"kernel": 1}, "head": {"kernel": 2, "bias": 3}}
  assert optim.path_mask(("head",))(params) == {
      "Conv_0": {"kernel": False}, "head": {"kernel": True, "bias": True}}


# --- compiled epoch --------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit_run():
  """30 epochs of the compiled loop on device-resident inputs; epochs 1.. run under
  transfer_guard("disallow")."""
  data = jax.device_put(device_dataset())
  tx = optim.sgd(0.1, momentum=0.9)
  recipe = TinyERM()
  state = jax.device_put(init_state(recipe, tx, data))
  train_epoch = epoch_fn(recipe, tx, data, 30)
  epochs = [jax.device_put(np.int32(e)) for e in range(30)]
  TRACES.clear()
  state, _ = train_epoch(state, epochs[0])
  with jax.transfer_guard("disallow"):
    for epoch in epochs[1:]:
      state, metrics = train_epoch(state, epoch)
  return dict(state=state, metrics=metrics, data=data, traces=len(TRACES),
              cache_size=train_epoch.jitted._cache_size())


def test_tiny_model_overfits(overfit_run):
  state, metrics, data = overfit_run["state"], overfit_run["metrics"], overfit_run["data"]
  assert metrics["loss"].shape == (64 // BATCH,)
  assert float(metrics["loss"].mean()) < 0.1
  assert int(state.step) == 30 * 4
  eval_fn = training.make_eval_fn(TinyNet().apply, TinyERM(), 24, normalize)
  result = training.evaluate(eval_fn, state.params, state.batch_stats, data.images,
                             data.labels, data.class_counts)
  assert result["top1"] == 1.0


def test_epoch_change_does_not_recompile(overfit_run):
  assert overfit_run["traces"] == 1
  assert overfit_run["cache_size"] == 1


def test_epochs_ran_without_host_transfers(overfit_run):
  # Nothing to compare: the fixture ran epochs 1..29 under jax.transfer_guard("disallow"),
  # which raises on any host transfer; here, that all 29 of them completed.
  assert int(overfit_run["state"].step) == 30 * (64 // BATCH)


def test_stepwise_loop_matches_the_scan():
  data = jax.device_put(device_dataset())
  tx = optim.sgd(0.1, momentum=0.9)
  runs = {}
  for loop in ("scan", "steps"):
    state = jax.device_put(init_state(TinyERM(), tx, data))
    train_epoch = epoch_fn(TinyERM(), tx, data, loop=loop)
    state, _ = train_epoch(state, jax.device_put(np.int32(0)))
    with jax.transfer_guard("disallow"):
      state, metrics = train_epoch(state, jax.device_put(np.int32(1)))
    runs[loop] = (state, metrics)
  assert runs["steps"][1]["loss"].shape == runs["scan"][1]["loss"].shape
  assert int(runs["steps"][0].step) == int(runs["scan"][0].step) == 2 * (64 // BATCH)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               (runs["steps"][0].params, runs["steps"][1]),
               (runs["scan"][0].params, runs["scan"][1]))
  with pytest.raises(ValueError, match="Unknown loop"):
    epoch_fn(TinyERM(), tx, data, loop="while")


def test_logged_lr_and_steps_follow_schedule():
  data = device_dataset()
  sched = schedules.warmup_multistep(0.1, 4, 2, (3,), (0.1,))
  tx = optim.sgd(sched, momentum=0.9, weight_decay=5e-4)
  state, train_epoch = init_state(TinyERM(), tx, data), epoch_fn(TinyERM(), tx, data)
  lrs = []
  for epoch in range(4):
    state, metrics = train_epoch(state, epoch)
    lrs.extend(np.asarray(metrics["lr"]).tolist())
  np.testing.assert_allclose(lrs, [0.05] * 4 + [0.1] * 8 + [0.01] * 4, rtol=1e-6)


def test_make_train_epoch_errors():
  data, tx = device_dataset(), optim.sgd(0.1)
  with pytest.raises(ValueError, match="batch_size"):
    training.make_train_epoch(TinyERM(), TinyNet().apply, tx, data, batch_size=65,
                              num_epochs=1, augment_fn=None, normalize_fn=normalize, seed=0)
  with pytest.raises(ValueError, match="num_epochs"):
    training.make_train_epoch(TinyERM(), TinyNet().apply, tx, data, batch_size=8,
                              num_epochs=0, augment_fn=None, normalize_fn=normalize, seed=0)


def test_evaluation_pads_last_batch():
  data = device_dataset(40)
  state = init_state(TinyERM(), optim.sgd(0.1), data)
  eval_fn = training.make_eval_fn(TinyNet().apply, TinyERM(), 16, normalize)
  logits = eval_fn(state.params, state.batch_stats, np.asarray(data.images))
  want = TinyNet().apply({"params": state.params, "batch_stats": state.batch_stats},
                         normalize(data.images), train=False)["logits"]
  assert logits.shape == (40, NUM_CLASSES)
  np.testing.assert_allclose(logits, np.asarray(want), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="batch_size"):
    training.make_eval_fn(TinyNet().apply, TinyERM(), 0, normalize)


# --- fit -------------------------------------------------------------------------------


def two_phases(data):
  steps = data.num_samples // BATCH
  main = training.Phase(TinyERM(), 3, optim.sgd(
      schedules.warmup_multistep(0.1, steps, 1, (2,)), momentum=0.9, weight_decay=5e-4))
  head = training.Phase(TinyERM(), 2, optim.sgd(
      0.05, momentum=0.9, trainable=optim.path_mask(("head",))), train_batch_stats=False)
  return [main, head]


def run_fit(data, workdir=None, **kw):
  images, labels = tiny_data(24, seed=1)
  return training.fit(TinyNet(), two_phases(data), data, batch_size=BATCH, seed=SEED,
                      normalize_fn=normalize, augment_fn=augment_fn, workdir=workdir,
                      test_images=images, test_labels=labels, eval_batch_size=10,
                      eval_every=2, progress=False, **kw)


class Recorder:
  def __init__(self):
    self.calls = []

  def on_epoch_end(self, epoch, train_metrics, eval_metrics):
    self.calls.append((epoch, train_metrics, eval_metrics))


def test_fit_resume_is_bit_identical(tmp_path):
  data = device_dataset()
  recorder = Recorder()
  full = run_fit(data, callbacks=[recorder])
  assert [c[0] for c in recorder.calls] == [0, 1, 2, 3, 4]
  assert [c[2] is not None for c in recorder.calls] == [False, True, False, True, True]
  assert set(recorder.calls[0][1]) == {"loss", "lr", "acc"}
  first = run_fit(data, tmp_path / "run", stop_after=2)
  assert first.epochs_done == 2
  boundary = run_fit(data, tmp_path / "run", stop_after=3)  # ends phase 1 exactly
  recorder = Recorder()
  resumed = run_fit(data, tmp_path / "run", callbacks=[recorder])
  assert [c[0] for c in recorder.calls] == [3, 4]
  assert first.final_metrics is not None and boundary.best_epoch is not None
  assert_trees_equal(resumed.state, full.state)
  assert resumed.final_metrics["top1"] == full.final_metrics["top1"]
  assert resumed.best_epoch == full.best_epoch
  # Phase 2 froze the backbone (params and BatchNorm statistics) and trained the head.
  assert_trees_equal(resumed.state.params["Conv_0"], boundary.state.params["Conv_0"])
  assert_trees_equal(resumed.state.batch_stats, boundary.state.batch_stats)
  assert not np.array_equal(resumed.state.params["head"]["kernel"],
                            boundary.state.params["head"]["kernel"])
  assert Checkpointer(tmp_path / "run").all_epochs() == [3, 4, 5]


def test_fit_detects_non_finite_loss(tmp_path):
  phase = training.Phase(TinyERM(nan_step=6), 3, optim.sgd(0.1))
  with pytest.raises(FloatingPointError, match=r"global step 6 \(epoch 1, step 2 "):
    training.fit(TinyNet(), [phase], device_dataset(), batch_size=BATCH, seed=SEED,
                 normalize_fn=normalize, workdir=tmp_path, progress=False)
  assert Checkpointer(tmp_path).all_epochs() == [1]   # nothing saved from the bad epoch


def test_fit_rejects_bad_phases():
  with pytest.raises(ValueError, match="at least one phase"):
    training.fit(TinyNet(), [], device_dataset(), batch_size=BATCH, seed=0,
                 normalize_fn=normalize, progress=False)
  with pytest.raises(ValueError, match="phase 0"):
    training.fit(TinyNet(), [training.Phase(TinyERM(), 0, optim.sgd(0.1))],
                 device_dataset(), batch_size=BATCH, seed=0, normalize_fn=normalize,
                 progress=False)
