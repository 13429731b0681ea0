"""The streamed input path (ltjax.data.stream, ltjax.feed, ltjax.training.streamed).

- Recipes whose batches are all clean train to the same parameters from a stream as from
  the device (the two paths share the epoch permutation and the step keys).
- Every class-law slot fed to the step follows its law: chi-square of the fed classes
  against the closed-form laws (n_k / N, 1 / K, (n_max / n_k)^(1 / gamma), n_k^-r).
- The class bank against a numpy transcription of its ring rule; its draws are uniform
  over the bank slots and always of the requested class.
- A batch split over processes is the one-process batch; an epoch resumed at step k
  reads and trains what the uninterrupted epoch did.
- Consecutive epochs and checkpoint segments read through one grain pipeline (its workers
  persist), which gives each step's own reads; a jump (resume) or the window's end opens a
  new one there.

Every registered method trains from generated JPEG files through experiments.train in
tests/test_stream_experiments.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

grain = pytest.importorskip("grain")

from ltjax import augment, feed, methods, recipe, samplers  # noqa: E402
from ltjax.data import pipeline, stream  # noqa: E402
from ltjax.models import get_model  # noqa: E402
from ltjax.training import checkpoint, loop, optim, schedules, streamed, trainer  # noqa: E402

K = 5
COUNTS = np.array([44, 20, 10, 6, 5])  # N = 85: a last batch of 5 with drop_last=False
N = int(COUNTS.sum())
B = 16
LABELS = np.repeat(np.arange(K), COUNTS).astype(np.int32)
IMAGES = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 1), dtype=np.uint8)
NORMALIZE = augment.Normalize.of((0.5,), (0.25,))


def streamed_set(**kwargs) -> stream.StreamedDataset:
  return stream.StreamedDataset(pipeline.ArraySource(IMAGES, LABELS), LABELS, K,
                                read_threads=1, **kwargs)


def model_for(rcp):
  name = "dual_small_cnn" if rcp.requirements().branches == 2 else "small_cnn"
  return get_model(name, K, head=rcp.requirements().head, widths=(4, 8))


def fit(rcp, data, epochs=2, **kwargs):
  phase = trainer.Phase(rcp, epochs, optim.sgd(schedules.constant(0.05), momentum=0.9))
  return trainer.fit(model_for(rcp), [phase], data, batch_size=B, seed=3,
                     normalize_fn=NORMALIZE, progress=False, loop="steps", **kwargs)


# ------------------------------------------------------------- same training on both paths

@pytest.mark.parametrize("name, drop_last", [
    ("erm", False), ("mixup_drw", True), ("cp_mix", True)])
def test_clean_batch_recipes_train_equal_on_both_paths(name, drop_last):
  overrides = {"stage2_epoch": 10} if name == "cp_mix" else {}  # stage 1 only
  rcp = methods.get_recipe(name, num_epochs=2, **overrides)
  on_device = fit(rcp, recipe.DeviceDataset.from_arrays(IMAGES, LABELS, K),
                  drop_last=drop_last)
  from_stream = fit(rcp, streamed_set(), drop_last=drop_last)
  assert int(from_stream.state.step) == int(on_device.state.step) == 2 * (
      N // B + (0 if drop_last else 1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               on_device.state.params, from_stream.state.params)
  np.testing.assert_allclose(from_stream.train_metrics["loss"],
                             on_device.train_metrics["loss"], rtol=1e-5)


def test_epoch_subset_predictions_equal_the_in_memory_ones():
  """OTmix's F_hat from the engine's host-read predictions equals the on-device one."""
  rcp = methods.get_recipe("otmix", num_epochs=2, confusion_per_class=6)
  model = model_for(rcp)
  tx = optim.sgd(schedules.constant(0.05))
  data = streamed_set()
  epoch = streamed.make_streamed_epoch(rcp, model.apply, tx, data, batch_size=B,
                                       num_epochs=2, augment_fn=None,
                                       normalize_fn=NORMALIZE, seed=0)
  state = trainer.create_state(model, rcp, tx, NORMALIZE(IMAGES[:1]), jax.random.key(1),
                               COUNTS)
  on_device = recipe.DeviceDataset.from_arrays(IMAGES, LABELS, K)
  evaluate = loop.make_evaluate(model.apply, state.params, state.batch_stats, NORMALIZE)
  expected = rcp.begin_epoch(rcp.init_state(COUNTS), jnp.int32(0), on_device, evaluate,
                             jax.random.fold_in(trainer.run_keys(0).epoch, 0), num_epochs=2)
  began = epoch.begin(epoch.inputs, state, epoch.device_data, jnp.int32(0),
                      epoch.predict(state))  # donates state
  np.testing.assert_allclose(began.method_state["confusion"], expected["confusion"])
  assert float(began.method_state["confusion"].sum()) > 0


# ------------------------------------------------------------------ the laws that are fed

def closed_form(name: str, **params) -> np.ndarray:
  n = COUNTS.astype(np.float64)
  weights = {"instance": n, "class_balanced": np.ones(K),
             "reverse": (n.max() / n) ** (1 / params.get("gamma", np.inf)),
             "inverse_power": n ** -params.get("r", 1.0)}[name]
  return weights / weights.sum()


def fed_labels(plan_laws, steps=150, refill=0):
  data = streamed_set()
  rows = tuple(np.arange(B) for _ in range(steps))
  plan = stream.EpochPlan(seed=11, rows=rows, first_step=0, laws=plan_laws, refill=refill)
  reader = stream.StepReader(data, [plan])
  feeds = [reader(t) for t in range(steps)]
  for f in feeds:  # every fed image and label is the source's record
    for fed in (*f.draws.values(), *(() if f.refill is None else (f.refill,))):
      np.testing.assert_array_equal(fed.labels, LABELS[fed.indices])
      np.testing.assert_array_equal(fed.images, IMAGES[fed.indices])
  return feeds


@pytest.mark.parametrize("rcp", [
    methods.get_recipe("lobm", num_epochs=2), methods.get_recipe("dbn_mix", num_epochs=2, gamma=1.0),
    methods.get_recipe("dbn_mix", num_epochs=2), methods.get_recipe("otmix", num_epochs=2),
    methods.get_recipe("otmix", num_epochs=2, r=0.5), methods.CPMixFinetune()],
    ids=["lobm", "dbn_gamma1", "dbn_gamma_inf", "otmix_r1", "otmix_r05", "cp_finetune"])
def test_every_fed_law_slot_follows_its_law(rcp):
  laws, banked = stream.feed_laws(rcp.requirements())
  assert laws and not banked
  feeds = fed_labels(laws)
  for law in laws:
    labels = np.concatenate([f.draws[law.slot].labels for f in feeds])
    expected = closed_form(law.name, gamma=float(law.gamma), r=float(law.r))
    observed = np.bincount(labels, minlength=K)
    assert stats.chisquare(observed, expected * labels.size).pvalue > 1e-3, law


def test_lobm_copies_are_independent_draws():
  a_law, b_law = methods.get_recipe("lobm", num_epochs=2).requirements().draws
  feeds = fed_labels((a_law, b_law))
  a = np.concatenate([f.draws[a_law.slot].labels for f in feeds])
  b = np.concatenate([f.draws[b_law.slot].labels for f in feeds])
  table = np.zeros((K, K))
  np.add.at(table, (a, b), 1)
  assert stats.chi2_contingency(table).pvalue > 1e-3
  assert not np.array_equal(a, b)


def test_bank_refill_is_class_balanced():
  feeds = fed_labels((), refill=B)
  labels = np.concatenate([f.refill.labels for f in feeds])
  assert stats.chisquare(np.bincount(labels, minlength=K)).pvalue > 1e-3


def test_cp_mix_declares_a_bank_and_no_law_slot():
  laws, banked = stream.feed_laws(methods.get_recipe("cp_mix", num_epochs=2).requirements())
  assert laws == () and banked


# --------------------------------------------------------------------------- class bank

def ring_reference(images, indices, written, labels, new_images, new_indices):
  """The ring rule, transcribed from the ltjax.feed docstring, one image at a time."""
  images, indices, written = images.copy(), indices.copy(), written.copy()
  per_class = indices.shape[1]
  seen = np.zeros_like(written)
  for label, image, index in zip(labels, new_images, new_indices):
    if seen[label] < per_class:
      slot = (written[label] + seen[label]) % per_class
      images[label, slot], indices[label, slot] = image, index
    seen[label] += 1
  return images, indices, written + np.minimum(seen, per_class)


def test_refill_matches_the_ring_rule():
  rng = np.random.default_rng(4)
  per_class = 3
  start = feed.bank_from_batch(feed.FedBatch(
      rng.integers(0, 256, (K * per_class, 2, 2, 1), dtype=np.uint8),
      np.repeat(np.arange(K), per_class), np.arange(K * per_class)), K, per_class)
  bank = start
  expected = tuple(np.asarray(a) for a in start)
  for step in range(6):
    labels = rng.choice(K, 9, p=[0.6, 0.1, 0.1, 0.1, 0.1]).astype(np.int32)  # >S of class 0
    batch = feed.FedBatch(rng.integers(0, 256, (9, 2, 2, 1), dtype=np.uint8), labels,
                          100 * (step + 1) + np.arange(9, dtype=np.int32))
    bank = jax.jit(feed.refill)(bank, batch)
    expected = ring_reference(*expected, labels, np.asarray(batch.images),
                              np.asarray(batch.indices))
    for got, want in zip(bank, expected):
      np.testing.assert_array_equal(np.asarray(got), want)


def test_bank_take_is_uniform_over_slots_and_of_the_requested_class():
  per_class = 4
  bank = feed.bank_from_batch(feed.FedBatch(
      np.arange(K * per_class, dtype=np.uint8).reshape(-1, 1, 1, 1),
      np.repeat(np.arange(K), per_class), np.arange(K * per_class)), K, per_class)
  classes = jnp.asarray(np.random.default_rng(0).integers(0, K, 4000), jnp.int32)
  images, indices = bank.take(jax.random.key(0), classes)
  np.testing.assert_array_equal(np.asarray(indices) // per_class, np.asarray(classes))
  np.testing.assert_array_equal(np.asarray(images).ravel(), np.asarray(indices))
  slots = np.asarray(indices) % per_class
  assert stats.chisquare(np.bincount(slots, minlength=per_class)).pvalue > 1e-3


# ------------------------------------------------------------ processes and resumption

def test_a_batch_split_over_processes_is_the_one_process_batch():
  data = streamed_set(transforms=(pipeline.RandomResizedCrop(6),
                                  pipeline.RandomHorizontalFlip()))
  laws = methods.get_recipe("lobm", num_epochs=2).requirements().draws
  rows = (np.arange(B), np.arange(B, 2 * B))
  plan = lambda p, count: stream.EpochPlan(seed=5, rows=rows, first_step=7, laws=laws,
                                           refill=B, process_index=p, process_count=count)
  whole = stream.StepReader(data, [plan(0, 1)])(1)
  parts = [stream.StepReader(data, [plan(p, 2)])(1) for p in range(2)]
  joined = jax.tree.map(lambda a, b: np.concatenate([a, b]), *parts)
  jax.tree.map(np.testing.assert_array_equal, whole, joined)


def test_an_epoch_resumed_at_step_k_continues_the_uninterrupted_one(tmp_path):
  rcp = methods.get_recipe("lobm", num_epochs=1)
  model = model_for(rcp)
  tx = optim.sgd(schedules.constant(0.05), momentum=0.9)
  data = streamed_set(transforms=(pipeline.RandomHorizontalFlip(),))
  epoch = streamed.make_streamed_epoch(rcp, model.apply, tx, data, batch_size=B,
                                       num_epochs=1, augment_fn=None,
                                       normalize_fn=NORMALIZE, seed=0)
  fresh = lambda: trainer.create_state(model, rcp, tx, NORMALIZE(IMAGES[:1]),
                                       jax.random.key(1), COUNTS)
  whole, _ = epoch(fresh(), 0)
  part, _ = epoch(fresh(), 0, stop=2)
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, part, phase=0, seed=0, force=True, metrics={})
  restored, _ = ckpt.restore(fresh())
  ckpt.close()
  resumed, _ = epoch(restored, 0, start=int(restored.step))
  assert int(resumed.step) == int(whole.step) == N // B
  jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)


# ------------------------------------------------------------ one pipeline across epochs

STEPS = 3


def plan_of(epoch: int) -> stream.EpochPlan:
  """Epoch `epoch`'s plan: a numpy permutation's first STEPS rows, a law slot, a refill."""
  order = np.random.default_rng(epoch).permutation(N)[:STEPS * B].reshape(STEPS, B)
  laws = methods.get_recipe("lobm", num_epochs=2).requirements().draws
  return stream.EpochPlan(seed=4, rows=tuple(order), first_step=epoch * STEPS, laws=laws,
                          refill=B)


def counted(feeds: stream.FeedStream) -> list[tuple[int, int]]:
  """The (epoch, step) where `feeds` opens each of its grain iterators."""
  opened, open_at = [], feeds._open  # pylint: disable=protected-access
  feeds._open = lambda e, t: (opened.append((e, t)), open_at(e, t))  # pylint: disable=protected-access
  return opened


def assert_feeds_are_the_steps(feeds, calls):
  """Every call's feeds are the direct reads of its (epoch, step)s."""
  data = streamed_set(transforms=(pipeline.RandomHorizontalFlip(),))
  for epoch, start, stop in calls:
    got = list(feeds.feeds(epoch, start, stop))
    assert len(got) == stop - start
    for t, fed in zip(range(start, stop), got):
      jax.tree.map(np.testing.assert_array_equal, fed,
                   stream.StepReader(data, [plan_of(epoch)])(t))


@pytest.mark.parametrize("workers", [0, 1])
def test_consecutive_epochs_and_segments_read_through_one_pipeline(workers):
  data = streamed_set(transforms=(pipeline.RandomHorizontalFlip(),), worker_count=workers)
  feeds = stream.FeedStream(data, plan_of, num_epochs=3, steps_per_epoch=STEPS)
  opened = counted(feeds)
  assert_feeds_are_the_steps(feeds, [(0, 0, 3), (1, 0, 1), (1, 1, 3), (2, 0, 3)])
  assert opened == [(0, 0)]
  feeds.close()


def test_a_jump_or_the_window_end_opens_a_new_pipeline_there():
  data = streamed_set(transforms=(pipeline.RandomHorizontalFlip(),))
  feeds = stream.FeedStream(data, plan_of, num_epochs=5, steps_per_epoch=STEPS, window=2)
  opened = counted(feeds)
  assert_feeds_are_the_steps(feeds, [(0, 0, 2), (2, 1, 3), (3, 0, 3), (4, 0, 2)])
  assert opened == [(0, 0), (2, 1), (4, 0)]  # a resume at (2, 1); its window ends at 4
  assert stream.FeedStream(data, plan_of, 5, STEPS).window == (
      stream.FeedStream.WINDOW_INDICES // N)


def test_fit_reads_a_phase_through_one_pipeline(tmp_path, monkeypatch):
  opened = []
  open_at = stream.FeedStream._open  # pylint: disable=protected-access
  monkeypatch.setattr(stream.FeedStream, "_open",
                      lambda self, e, t: (opened.append((e, t)), open_at(self, e, t)))
  result = fit(methods.get_recipe("erm", num_epochs=3), streamed_set(), epochs=3,
               workdir=tmp_path, checkpoint_every_steps=2)
  assert int(result.state.step) == 3 * (N // B)
  assert opened == [(0, 0)]  # 3 epochs, each saved mid-epoch twice


def _context(fed=None):
  labels = np.repeat(np.arange(4), [8, 4, 2, 1]).astype(np.int32)
  data = recipe.DeviceDataset.from_arrays(np.zeros((15, 4, 4, 1), np.uint8), labels, 4)
  load = lambda key, idx: (jnp.zeros((idx.shape[0], 4, 4, 1)), data.labels[idx])
  return recipe.StepContext(
      key=jax.random.key(0), step=jnp.int32(0), epoch=jnp.int32(0), num_epochs=1,
      batch_size=6, clean_indices=jnp.arange(6), data=data, load=load, feed=fed,
      transform=lambda key, images: images.astype(jnp.float32))


def test_draw_takes_a_law_or_in_memory_its_probability_vector():
  ctx, law = _context(), samplers.Law("reverse", gamma=1.0)
  key = jax.random.key(3)
  by_law = ctx.draw(key, law)
  by_probs = ctx.draw(key, law.probs(ctx.class_counts))
  np.testing.assert_array_equal(by_law.indices, by_probs.indices)
  fed = feed.FedBatch(jnp.zeros((6, 4, 4, 1), jnp.uint8), jnp.zeros(6, jnp.int32),
                      jnp.arange(6))
  fed_ctx = _context(feed.Feed(clean=fed, draws={law.slot: fed}))
  np.testing.assert_array_equal(fed_ctx.draw(key, law).indices, np.arange(6))
  with pytest.raises(TypeError, match="declared samplers.Law"):
    fed_ctx.draw(key, law.probs(ctx.class_counts))


class _Killed(Exception):
  """Stands for the job being killed while it reads the stream."""


class _DyingSource(pipeline.ArraySource):
  """ArraySource that fails once `limit` records have been read (a killed run)."""

  def __init__(self, limit):
    super().__init__(IMAGES, LABELS)
    self.reads, self.limit = 0, limit

  def __getitem__(self, index):
    self.reads += 1
    if self.reads > self.limit:
      raise _Killed(f"killed after {self.limit} reads")
    return super().__getitem__(index)


def test_fit_killed_mid_epoch_resumes_at_its_step_as_the_uninterrupted_run(tmp_path):
  """LOBM (a clean batch and two class-law slots per step), 2 epochs of 5 steps, a
  mid-epoch checkpoint every 2 steps; the run dies reading step 3 of epoch 1 (3 batches
  of 16 per step: 48 reads), is resumed from step 2 of that epoch, and ends with the
  parameters and epoch metrics of the run that was never interrupted."""
  rcp = methods.get_recipe("lobm", num_epochs=2)
  whole = fit(rcp, streamed_set())
  dying = stream.StreamedDataset(_DyingSource(limit=48 * (5 + 3)), LABELS, K, read_threads=1)
  workdir = tmp_path / "run"
  with pytest.raises(_Killed):
    fit(rcp, dying, workdir=workdir, checkpoint_every_steps=2)
  ckpt = checkpoint.Checkpointer(workdir)
  partial = ckpt.latest_partial()
  assert ckpt.latest_epoch() == 1 and (partial["epoch"], partial["epoch_step"]) == (1, 2)
  assert partial["global_step"] == 5 + 2 and len(partial["step_metrics"]["loss"]) == 2
  ckpt.close()
  counting = _DyingSource(limit=10**6)
  resumed = fit(rcp, stream.StreamedDataset(counting, LABELS, K, read_threads=1),
                workdir=workdir, checkpoint_every_steps=2)
  # One record for the input shape, then steps 2, 3 and 4 of epoch 1: nothing read twice.
  assert counting.reads == 1 + 48 * 3
  jax.tree.map(np.testing.assert_array_equal, whole.state.params, resumed.state.params)
  assert resumed.train_metrics == pytest.approx(whole.train_metrics, rel=1e-6)
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_epoch() == 2 and ckpt.latest_partial() is None  # superseded
  ckpt.close()


def test_mid_epoch_checkpoints_need_a_stream():
  rcp = methods.get_recipe("erm", num_epochs=1)
  data = recipe.DeviceDataset.from_arrays(IMAGES, LABELS, K)
  with pytest.raises(ValueError, match="checkpoint_every_steps=3"):
    fit(rcp, data, epochs=1, checkpoint_every_steps=3)
