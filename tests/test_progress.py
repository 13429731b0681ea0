"""Tests of `fit`'s progress bar (ltjax.training.trainer.ProgressBar) and the per-step hook
of the compiled epoch (`TrainEpoch(state, epoch, on_step)`)."""

from __future__ import annotations

import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import methods, training
from ltjax import recipe as recipe_lib
from ltjax.models import get_model
from ltjax.training import optim, trainer

K, N, B, SEED = 4, 44, 8, 5  # N mod B = 4: drop_last=False adds a last step of 4
LABELS = (np.arange(N) % K).astype(np.int32)
IMAGES = np.random.default_rng(1).integers(0, 256, (N, 6, 6, 1), np.uint8)


def normalize(images):
  return images.astype(jnp.float32) / 255.0 - 0.5


def data():
  return recipe_lib.DeviceDataset.from_arrays(IMAGES, LABELS, K)


def model():
  return get_model("small_cnn", K, widths=(4,))


def train_epoch(loop, drop_last):
  erm = methods.get_recipe("erm", num_epochs=2)
  tx = optim.sgd(0.1)
  state = training.create_state(model(), erm, tx, jnp.zeros((1, 6, 6, 1)),
                                training.run_keys(SEED).init, np.bincount(LABELS))
  epoch = training.make_train_epoch(erm, model().apply, tx, data(), batch_size=B,
                                    num_epochs=2, augment_fn=None, normalize_fn=normalize,
                                    seed=SEED, loop=loop, drop_last=drop_last)
  return epoch, state


@pytest.mark.parametrize("drop_last", [True, False])
def test_step_loop_calls_the_hook_once_per_step_with_that_steps_metrics(drop_last):
  epoch, state = train_epoch("steps", drop_last)
  seen = []
  state, metrics = epoch(state, 0, seen.append)
  assert len(seen) == (N // B if drop_last else N // B + 1) == epoch.steps_per_epoch
  np.testing.assert_array_equal([float(m["loss"]) for m in seen], np.asarray(metrics["loss"]))
  assert int(state.step) == len(seen)


def test_scan_loop_never_calls_the_hook():
  epoch, state = train_epoch("scan", True)
  seen = []
  state, _ = epoch(state, 0, seen.append)
  assert not seen and int(state.step) == N // B


class Loss:
  """A stand-in for a step's loss on the device that records when the host waits on it."""

  def __init__(self, step, waited):
    self.step, self.waited = step, waited

  def block_until_ready(self):
    self.waited.append(self.step)
    return self


class FakeTTY(io.StringIO):
  def isatty(self):
    return True


def bar(file, enabled=True, steps=20):
  return trainer.ProgressBar(enabled, total_epochs=3, start_epoch=1, steps_per_epoch=steps,
                             batch_size=B, num_samples=steps * B, file=file)


def test_bar_counts_finished_steps_and_never_waits_on_the_last_dispatched():
  progress, waited = bar(FakeTTY()), []
  lag = trainer.IN_FLIGHT_STEPS
  progress.start_epoch(1)
  assert progress.bar.n == 20  # the resumed epoch is done
  for t in range(20):
    progress.on_step({"loss": Loss(t, waited)})
    # After dispatching step t the host has waited on step t - lag, and only on it.
    assert waited == list(range(max(0, t - lag + 1)))
    assert progress.bar.n == 20 + max(0, t - lag + 1)
  progress.end_epoch({"loss": 0.5, "lr": 0.1})
  assert progress.bar.n == 40 and waited == list(range(20 - lag))


def test_bar_shows_epoch_steps_rate_eta_and_latest_top1():
  file = FakeTTY()
  progress = bar(file)
  progress.start_epoch(1)
  progress.end_epoch({"loss": 0.25, "lr": 0.05})
  progress.show_eval({"top1": 0.6125})
  progress.bar.refresh()
  line = file.getvalue().split("\r")[-1]
  assert line.startswith("epoch 2/3:")
  assert "40/60" in line and "step/s" in line and "<" in line  # steps, rate, ETA
  assert re.search(r"img/s \d+, loss 0.2500, lr 0.05, top1 61.25%", line), line


def test_disabled_bar_writes_and_waits_on_nothing():
  file, waited = FakeTTY(), []
  progress = bar(file, enabled=False)
  progress.start_epoch(1)
  for t in range(20):
    progress.on_step({"loss": Loss(t, waited)})
  progress.end_epoch({"loss": 0.5, "lr": 0.1})
  progress.close()
  assert not waited and file.getvalue() == ""


def run_fit(progress, loop="steps"):
  erm = methods.get_recipe("erm", num_epochs=3)
  return training.fit(model(), [training.Phase(erm, 3, optim.sgd(0.1))], data(),
                      batch_size=B, seed=SEED, normalize_fn=normalize, test_images=IMAGES,
                      test_labels=LABELS, eval_every=2, progress=progress, loop=loop)


@pytest.mark.parametrize("loop", ["steps", "scan"])
def test_fit_progress_off_a_terminal_is_a_few_redraws_on_stderr(capfd, loop):
  quiet = run_fit(False, loop)
  assert capfd.readouterr() == ("", "")
  shown = run_fit(True, loop)
  out, err = capfd.readouterr()
  assert out == ""
  redraws = [r for r in err.split("\r") if r.strip()]
  # Off a terminal: the first draw and the last one, not one per step (N // B * 3 = 15).
  assert len(redraws) <= 3, redraws
  assert "15/15" in redraws[-1] and "epoch 3/3" in redraws[-1]
  assert f"top1 {100 * shown.final_metrics['top1']:.2f}%" in redraws[-1]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               shown.state, quiet.state)
