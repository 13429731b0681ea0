"""Direct behaviour checks of the method recipes (ltjax.methods).

A tiny synthetic dataset (K = 4 classes, counts 36/16/8/4, N = 64 images of 8x8x1) in
which image i is the one-hot pixel e_i: a mixed input lam e_i + (1 - lam) e_j reveals
both partners and the factor, and for vanilla label mixing the soft label is x @ Y (Y the
(N, K) one-hot label matrix). The model is a linear map with recorded inputs, so each
recipe's loss can be recomputed in float64 numpy from what it fed the model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy import stats

from ltjax import mixing, recipe, samplers
from ltjax import models as models_lib
from ltjax import methods
from ltjax.methods import criteria, lobm, mixup

K = 4
COUNTS = np.array([36, 16, 8, 4])
N = int(COUNTS.sum())
B = 8
LABELS = np.repeat(np.arange(K), COUNTS).astype(np.int32)
Y = np.eye(K)[LABELS]
W = np.random.default_rng(0).normal(size=(N, K)).astype(np.float32)
W_R = np.random.default_rng(1).normal(size=(N, K)).astype(np.float32)


def one_hot_images() -> np.ndarray:
  images = (np.eye(N, dtype=np.uint8) * 255).reshape(N, 8, 8, 1)
  return images


def make_data(images: np.ndarray | None = None) -> recipe.DeviceDataset:
  images = one_hot_images() if images is None else images
  return recipe.DeviceDataset(jnp.asarray(images), jnp.asarray(LABELS),
                              samplers.build_class_index(LABELS, K))


def make_ctx(key, epoch=0, num_epochs=10, clean=None, data=None) -> recipe.StepContext:
  data = make_data() if data is None else data
  clean = np.arange(B) * 7 % N if clean is None else clean
  epoch = jnp.asarray(epoch, jnp.int32)

  def load(key, idx):
    del key
    return data.images[idx].astype(jnp.float32) / 255.0, data.labels[idx]

  return recipe.StepContext(key=key, step=jnp.int32(0), epoch=epoch,
                            num_epochs=num_epochs, batch_size=B,
                            clean_indices=jnp.asarray(clean, jnp.int32), data=data,
                            load=load)


class Recorder:
  """A linear 'model': logits = flat(x)[:, :N] @ W, features = flat(x); records its inputs."""

  def __init__(self):
    self.calls = []

  def __call__(self, variables, x, train, x_rebalance=None):
    self.calls.append((x, x_rebalance, train))
    flat = x.reshape(x.shape[0], -1)
    out = {"logits": flat[:, :N] @ variables["params"]["w"], "features": flat}
    if x_rebalance is not None:
      flat_r = x_rebalance.reshape(x.shape[0], -1)[:, :N]
      out = {"logits_c": out["logits"], "logits_r": flat_r @ variables["params"]["w_r"],
             "features": flat}
      out["logits"] = 0.5 * (out["logits_c"] + out["logits_r"])
    return out

  def forward(self, train=True):
    params = {"w": jnp.asarray(W), "w_r": jnp.asarray(W_R)}
    return recipe.Forward(self, params, {}, train)

  def inputs(self, i=0):
    x, x_r, _ = self.calls[i]
    flat = lambda a: None if a is None else np.asarray(a, np.float64).reshape(a.shape[0], -1)
    return flat(x), flat(x_r)


def np_ce(logits, soft):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  return float(-(soft * logp).sum(1).mean())


class Run(NamedTuple):
  loss: float
  out: recipe.LossOutput
  inputs: list
  train: list


@functools.lru_cache(maxsize=None)
def compiled(recipe_, num_epochs, calls):
  """The jitted loss of `recipe_` (one compilation per recipe) and its model-call flags."""
  flags = []

  @jax.jit
  def jitted(key, epoch, clean, data, state):
    rec = Recorder()
    loss, out = recipe_.loss(rec.forward(), make_ctx(key, epoch, num_epochs, clean, data),
                             state)
    flags[:] = [c[2] for c in rec.calls]
    return loss, out._replace(forward=None), [rec.calls[i][:2] for i in calls]

  return jitted, flags


def run(recipe_, ctx, state=(), calls=(0,)):
  """Runs `recipe_.loss` under jit; returns the loss, its LossOutput (without the forward),
  the (x, x_rebalance) the model received in its top-level calls `calls`, and the `train`
  flag of every model call."""
  jitted, flags = compiled(recipe_, ctx.num_epochs, calls)
  loss, out, inputs = jitted(ctx.key, ctx.epoch, ctx.clean_indices, ctx.data, state)
  flat = lambda a: None if a is None else np.asarray(a, np.float64).reshape(a.shape[0], -1)
  return Run(float(loss), out, [(flat(x), flat(x_r)) for x, x_r in inputs], list(flags))


def decode_pairs(x, clean):
  """(lam, partner) of rows lam e_clean + (1 - lam) e_partner."""
  lam = x[np.arange(len(clean)), clean]
  rest = x.copy()
  rest[np.arange(len(clean)), clean] = 0
  partner = np.where(rest.max(1) > 0, rest.argmax(1), clean)
  return lam, partner


# ----------------------------------------------------------------------------- criteria

def test_criterion_drw_switches_on_traced_epoch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, K)).astype(np.float32)
  soft = np.eye(K)[rng.integers(0, K, 6)]
  labels = mixing.MixedLabels.hard(soft.argmax(1))
  crit = criteria.Criterion("ce", drw_epoch=3)
  w = (1 - 0.9999) / (1 - 0.9999 ** COUNTS.astype(np.float64))
  w = w * K / w.sum()
  per = -(soft * (logits - np.log(np.exp(logits).sum(1, keepdims=True)))).sum(1)
  weighted = float((per * (soft @ w)).sum() / (soft @ w).sum())  # F.cross_entropy(weight=w)
  fn = jax.jit(lambda e: crit.compute(logits, labels, COUNTS, e))
  np.testing.assert_allclose(float(fn(2)), per.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(fn(3)), weighted, rtol=1e-5)


def test_criterion_kinds_and_head():
  assert criteria.Criterion("ldam").required_head == "normalized"
  assert methods.ERM(criterion=criteria.Criterion("ldam")).head == "normalized"
  assert methods.ERM().head == "linear"
  logits = np.random.default_rng(1).normal(size=(5, K)).astype(np.float32)
  soft = np.eye(K)[[0, 1, 2, 3, 0]]
  bs = criteria.Criterion("balanced_softmax").compute(
      logits, mixing.MixedLabels.hard(np.array([0, 1, 2, 3, 0])), COUNTS, 0)
  np.testing.assert_allclose(float(bs), np_ce(logits + np.log(COUNTS / N), soft), rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(kind="hinge"), dict(drw_epoch=-1), dict(beta=1.0),
                                    dict(kind="focal", drw_epoch=2), dict(scale=0.0)])
def test_criterion_invalid(kwargs):
  with pytest.raises(ValueError):
    criteria.Criterion(**kwargs)


# ----------------------------------------------------------------------------- ERM

def test_erm_loss_is_criterion_on_clean_batch():
  ctx = make_ctx(jax.random.key(0))
  loss, _, [(x, _)], _ = run(methods.ERM(), ctx)
  rec = Recorder()
  eager, _ = methods.ERM().loss(rec.forward(), ctx, ())
  np.testing.assert_allclose(float(eager), loss, rtol=1e-6)  # jit and non-jit agree
  clean = np.asarray(ctx.clean_indices)
  np.testing.assert_allclose(x, np.eye(N)[clean])
  np.testing.assert_allclose(loss, np_ce(W[clean], Y[clean]), rtol=1e-5)


def test_cb_sampling_draws_classes_uniformly_and_images_uniformly_within():
  """CB Samp. (LOBM Table 1, Shen et al. 2016): P(x_i) = 1 / (K n_{y_i}); the loss is
  cross-entropy on exactly the drawn images."""
  recipe_ = methods.get_recipe("cb_sampling", num_epochs=10)
  drawn = []
  for seed in range(150):
    loss, out, [(x, _)], _ = run(recipe_, make_ctx(jax.random.key(seed)))
    idx = np.asarray(out.draws["indices"])
    np.testing.assert_allclose(x, np.eye(N)[idx])
    np.testing.assert_allclose(loss, np_ce(W[idx], Y[idx]), rtol=1e-5)
    drawn.append(idx)
  drawn = np.concatenate(drawn)
  assert stats.chisquare(np.bincount(LABELS[drawn], minlength=K)).pvalue > 1e-3
  tail = drawn[LABELS[drawn] == 0]  # the head class: 36 images, each 1 / 36 of its draws
  assert stats.chisquare(np.bincount(tail, minlength=COUNTS[0])).pvalue > 1e-3


def test_drs_is_instance_balanced_before_defer_epoch_and_class_balanced_after():
  recipe_ = methods.get_recipe("drs", num_epochs=10)
  assert recipe_.defer_epoch == 8  # the first LR decay, 160 of 200 (as LOBM*)
  clean = np.arange(B)  # all of class 0
  before = [np.asarray(run(recipe_, make_ctx(jax.random.key(s), epoch=7, clean=clean)
                           ).out.draws["indices"]) for s in range(3)]
  for idx in before:
    np.testing.assert_array_equal(idx, clean)
  after = np.concatenate([run(recipe_, make_ctx(jax.random.key(s), epoch=8, clean=clean)
                              ).out.draws["indices"] for s in range(100)])
  assert stats.chisquare(np.bincount(LABELS[after], minlength=K)).pvalue > 1e-3


def test_erm_sampler_options_are_checked():
  with pytest.raises(ValueError, match="Unknown sampler 'balanced'"):
    methods.ERM(sampler="balanced")
  with pytest.raises(ValueError, match="defer_epoch defers a sampler"):
    methods.ERM(defer_epoch=3)
  assert methods.ERM(sampler="reverse").requirements().draws == (samplers.Law("reverse"),)
  assert methods.ERM().requirements().draws == ()


# ----------------------------------------------------------------------------- mixup family

def np_remix(lam, na, nb, kappa=3.0, tau=0.5):
  if na / nb >= kappa and lam < tau:
    return 0.0
  if na / nb <= 1 / kappa and 1 - lam < tau:
    return 1.0
  return lam


def np_mamix(lam, na, nb, omega=0.25):
  ea, eb = na ** -omega, nb ** -omega
  m = eb / (ea + eb)
  return 1 - 0.5 * (1 - lam) / (ea / (ea + eb)) if lam >= m else 0.5 * lam / m


@pytest.mark.parametrize("rule,np_rule", [("vanilla", lambda lam, a, b: lam),
                                          ("remix", np_remix), ("mamix", np_mamix)])
@pytest.mark.parametrize("per_sample", [False, True])
def test_mixup_labels_follow_rule(rule, np_rule, per_sample):
  recipe_ = methods.Mixup(label_rule=rule, per_sample_lambda=per_sample)
  clean = np.array([0, 1, 40, 41, 52, 53, 60, 61])  # classes 0 0 1 1 2 2 3 3
  for seed in range(3):
    ctx = make_ctx(jax.random.key(seed), clean=clean)
    loss, _, [(x, _)], _ = run(recipe_, ctx)
    lam, partner = decode_pairs(x, clean)
    if not per_sample:
      same = partner == clean
      assert np.allclose(lam[~same], lam[~same][0])
    lam_y = np.array([np_rule(l, COUNTS[LABELS[i]], COUNTS[LABELS[j]])
                      for l, i, j in zip(lam, clean, partner)])
    soft = lam_y[:, None] * Y[clean] + (1 - lam_y[:, None]) * Y[partner]
    np.testing.assert_allclose(loss, np_ce(x @ W, soft), rtol=1e-4)


@pytest.mark.parametrize("rule,np_rule", [("remix", np_remix), ("mamix", np_mamix)])
def test_remix_and_mamix_label_a_majority_minority_pair_by_their_rule(rule, np_rule):
  counts = jnp.asarray(COUNTS)
  a, b = jnp.array([0]), jnp.array([3])  # 36 vs 4 images
  for seed in range(8):
    mixed = mixup.mix_batch(jax.random.key(seed), jnp.zeros((1, 2)), a, jnp.zeros((1, 2)),
                            b, counts, alpha=1.0, rule=methods.Mixup(label_rule=rule).rule())
    want = np_rule(float(mixed.lam), 36, 4)
    np.testing.assert_allclose(float(mixed.labels.lam[0]), want, rtol=1e-5, atol=1e-6)


def test_smote_mix_pairs_within_class_with_hard_labels():
  clean = np.array([0, 1, 2, 40, 41, 52, 53, 60])
  ctx = make_ctx(jax.random.key(3), clean=clean)
  loss, _, [(x, _)], train = run(methods.get_recipe("smote_mix", num_epochs=10), ctx,
                                 calls=(1,))
  assert train == [False, True]  # call 0 is the inference-mode feature pass
  _, partner = decode_pairs(x, clean)
  np.testing.assert_array_equal(LABELS[partner], LABELS[clean])
  assert (partner[LABELS[clean] != 3] != clean[LABELS[clean] != 3]).all()
  np.testing.assert_allclose(loss, np_ce(x @ W, Y[clean]), rtol=1e-5)


def test_neighbor_mix_uses_nearest_feature_neighbour():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, size=(N, 8, 8, 1)).astype(np.uint8)
  data = make_data(images)
  clean = np.arange(B) * 5
  ctx = make_ctx(jax.random.key(1), clean=clean, data=data)
  recipe_ = methods.get_recipe("neighbor_mix", num_epochs=10)
  x, labels, _ = ctx.clean_batch(None)
  partner = recipe_.partners(jax.random.key(0), Recorder().forward(), x, labels)
  feats = images[clean].reshape(B, -1).astype(np.float64) / 255
  dist = ((feats[:, None] - feats[None]) ** 2).sum(-1) + np.diag(np.full(B, np.inf))
  np.testing.assert_array_equal(np.asarray(partner), dist.argmin(1))


# ----------------------------------------------------------------------------- LOBM

def test_lobm_both_sides_class_balanced():
  draw = jax.jit(jax.vmap(lambda k: lobm.balanced_pair(make_ctx(k), k)))
  batch_a, batch_b = draw(jax.random.split(jax.random.key(0), 500))
  y_a, y_b = batch_a.labels, batch_b.labels
  for side in (y_a, y_b):
    observed = np.bincount(np.asarray(side).ravel(), minlength=K)
    assert stats.chisquare(observed).pvalue > 1e-3
  # the two sides are drawn independently
  table = np.histogram2d(np.asarray(y_a).ravel(), np.asarray(y_b).ravel(), bins=K)[0]
  assert stats.chi2_contingency(table).pvalue > 1e-3


def test_lobm_loss_is_vanilla_mixup_of_balanced_draws():
  ctx = make_ctx(jax.random.key(5))
  loss, _, [(x, _)], _ = run(methods.get_recipe("lobm", num_epochs=10), ctx)
  np.testing.assert_allclose(x.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(loss, np_ce(x @ W, x @ Y), rtol=1e-5)


def test_lobm_star_switches_at_defer_epoch():
  recipe_ = methods.get_recipe("lobm_star", num_epochs=10)
  assert recipe_.defer_epoch == 8  # first LR decay, 160 of 200
  clean = np.arange(B)  # all of class 0
  outside = []
  for epoch in (7, 8):
    used = set()
    for seed in range(4):
      ctx = make_ctx(jax.random.key(seed), epoch=epoch, clean=clean)
      loss, _, [(x, _)], _ = run(recipe_, ctx)
      used |= set(np.flatnonzero(x.sum(0) > 0))
      np.testing.assert_allclose(loss, np_ce(x @ W, x @ Y), rtol=1e-5)
    outside.append(used - set(clean))
  assert not outside[0]  # plain in-batch mixup before the switch
  assert {LABELS[i] for i in outside[1]} >= {1, 2, 3}  # class-balanced draws from it on


# ----------------------------------------------------------------------------- DBN / SBN

def test_dbn_mix_bilateral_inputs_and_loss():
  recipe_ = methods.get_recipe("dbn_mix", num_epochs=10)
  for seed in range(3):
    ctx = make_ctx(jax.random.key(seed))
    loss, _, [(x_c, x_r)], _ = run(recipe_, ctx)
    clean = np.asarray(ctx.clean_indices)
    lam_c, rev = decode_pairs(x_c, clean)
    lam_r = x_r[np.arange(B), clean]
    distinct = rev != clean
    assert (lam_c >= 0.5).all() and (lam_r[distinct] <= 0.5 + 1e-6).all()
    np.testing.assert_allclose(lam_c[distinct] + lam_r[distinct], 1.0, rtol=1e-6)
    np.testing.assert_allclose(x_c + x_r, np.eye(N)[clean] + np.eye(N)[rev], atol=1e-6)
    temps = np_temperatures("paper", 3.0, 0.6)
    expected = 0.5 * (np_ce((x_c @ W) / temps, x_c @ Y) + np_ce((x_r @ W_R) / temps, x_r @ Y))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def np_temperatures(form, eta, eps):
  n = COUNTS.astype(np.float64)
  slope = eps * K if form == "code" else eps
  b = slope * n / n.max() + 1 - eps
  return (b.max() / b) ** (1 / eta)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_dbn_temperatures_equal_formula(form):
  temps = methods.DBNMix(eta=7.0, eps=0.6, temperature=form).temperatures(jnp.asarray(COUNTS))
  np.testing.assert_allclose(np.asarray(temps), np_temperatures(form, 7.0, 0.6), rtol=1e-5)
  none = methods.DBNMix(temperature="none").temperatures(jnp.asarray(COUNTS))
  np.testing.assert_array_equal(np.asarray(none), 1.0)


def test_dbn_inference_averages_logits_without_temperature():
  model = models_lib.dual_small_cnn(K, widths=(4, 8))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  out = model.apply(variables, x, train=False)
  logits = methods.DBNMix().logits(out)
  np.testing.assert_allclose(np.asarray(logits),
                             0.5 * (np.asarray(out["logits_c"]) + np.asarray(out["logits_r"])),
                             rtol=1e-6)


def test_sbn_mix_single_lambda_uniform_reverse_pair():
  ctx = make_ctx(jax.random.key(2))
  loss, _, [(x, x_r)], _ = run(methods.get_recipe("sbn_mix", num_epochs=10), ctx)
  assert x_r is None
  clean = np.asarray(ctx.clean_indices)
  lam, rev = decode_pairs(x, clean)
  assert np.allclose(lam[rev != clean], lam[rev != clean][0])
  temps = np_temperatures("paper", 3.0, 0.6)
  np.testing.assert_allclose(loss, np_ce((x @ W) / temps, x @ Y), rtol=1e-5)


# ----------------------------------------------------------------------------- CP-Mix

def test_cp_mix_counts_match_numpy_misclassifications():
  recipe_ = methods.CPMix(stage2_epoch=5)
  state = recipe_.init_state(jnp.asarray(COUNTS))
  step = jax.jit(lambda key, e, clean, s: recipe_.loss(
      Recorder().forward(), make_ctx(key, e, 10, clean), s)[1].method_state)
  expected = np.zeros((K, K), int)
  rng = np.random.default_rng(0)
  for t in range(6):
    clean = rng.choice(N, B, replace=False)
    state = step(jax.random.key(t), t, clean, state)
    pred = W[clean].argmax(1)
    for true, p in zip(LABELS[clean], pred):
      if true != p:
        expected[true, p] += 1
  np.testing.assert_array_equal(np.asarray(state["confusion"]), expected)
  assert expected.sum() > 0


def test_cp_pairs_come_from_their_rows():
  confusion = np.zeros((K, K), np.int32)
  confusion[0, 2] = 3
  confusion[1, 0], confusion[1, 3] = 1, 3
  confusion[3, 1] = 5  # row 2 is empty
  true, conf, _, _ = jax.jit(
      lambda k: methods.CPMix().cp_pairs(k, confusion, K, 4000))(jax.random.key(0))
  true, conf = np.asarray(true), np.asarray(conf)
  assert stats.chisquare(np.bincount(true, minlength=K)).pvalue > 1e-3
  assert (conf[true == 0] == 2).all() and (conf[true == 3] == 1).all()
  row1 = np.bincount(conf[true == 1], minlength=K)[[0, 3]]
  assert stats.chisquare(row1, row1.sum() * np.array([0.25, 0.75])).pvalue > 1e-3
  row2 = np.bincount(conf[true == 2], minlength=K)
  assert row2[2] == 0 and stats.chisquare(row2[[0, 1, 3]]).pvalue > 1e-3


def test_cp_mix_stage1_is_balanced_softmax_erm_by_default():
  """Appendix B.3: stage 1 differs from ERM only by collecting confusion pairs."""
  recipe_ = methods.CPMix(stage2_epoch=3)
  state = {"confusion": jnp.ones((K, K), jnp.int32)}
  ctx = make_ctx(jax.random.key(0), epoch=2)
  loss, out, _, _ = run(recipe_, ctx, state)
  clean = np.asarray(ctx.clean_indices)
  loss_bs = np_ce(W[clean] + np.log(COUNTS / N), Y[clean])
  np.testing.assert_allclose(loss, loss_bs, rtol=1e-5)
  assert float(out.metrics["loss_mix"]) == 0.0 and float(out.metrics["loss_cp"]) == 0.0
  # Stage 2 adds 2.5 L(mixup of the clean batch) + 2.5 L(CP batch), both labelled by the
  # CP-Mix rule t lam + (1 - t) n_b / (n_a + n_b), t = 1/2; inputs rebuilt from the draws.
  loss2, out2, _, _ = run(recipe_, make_ctx(jax.random.key(0), epoch=3), state)
  draws = jax.tree.map(np.asarray, out2.draws)

  def mixup_ce(idx_a, idx_b, lam):
    lam_y = 0.5 * lam + 0.5 * COUNTS[LABELS[idx_b]] / (COUNTS[LABELS[idx_a]]
                                                        + COUNTS[LABELS[idx_b]])
    x = lam * np.eye(N)[idx_a] + (1 - lam) * np.eye(N)[idx_b]
    return np_ce(x @ W, lam_y[:, None] * Y[idx_a] + (1 - lam_y[:, None]) * Y[idx_b])

  loss_mix = mixup_ce(clean, clean[draws["mix_partner"]], float(draws["mix_lam"]))
  loss_cp = mixup_ce(draws["cp_indices_t"], draws["cp_indices_m"], float(draws["cp_lam"]))
  np.testing.assert_allclose(loss2, loss_bs + 2.5 * loss_mix + 2.5 * loss_cp, rtol=1e-5)


def test_cp_mix_logit_scale_multiplies_the_logits_of_its_losses():
  """A scaled cosine classifier (CP-Mix on iNaturalist): every loss sees s * logits."""
  ctx = make_ctx(jax.random.key(0), epoch=0)
  loss, _, _, _ = run(methods.CPMix(stage2_epoch=3, logit_scale=4.0), ctx,
                      {"confusion": jnp.zeros((K, K), jnp.int32)})
  clean = np.asarray(ctx.clean_indices)
  np.testing.assert_allclose(loss, np_ce(4.0 * W[clean] + np.log(COUNTS / N), Y[clean]),
                             rtol=1e-5)
  ft_loss, _, [(x, _)], _ = run(methods.CPMixFinetune(logit_scale=4.0), ctx)
  np.testing.assert_allclose(ft_loss, np_ce(4.0 * (x @ W), x @ Y), rtol=1e-5)


def test_cp_mix_mix_from_start_adds_the_mix_term_in_stage1_but_no_cp_term():
  recipe_ = methods.CPMix(stage2_epoch=3, mix_label_rule="vanilla", mix_from="start")
  state = {"confusion": jnp.ones((K, K), jnp.int32)}
  ctx = make_ctx(jax.random.key(0), epoch=2)
  loss, out, [(x_mix, _)], _ = run(recipe_, ctx, state, calls=(1,))
  clean = np.asarray(ctx.clean_indices)
  loss_bs = np_ce(W[clean] + np.log(COUNTS / N), Y[clean])
  np.testing.assert_allclose(loss, loss_bs + 2.5 * np_ce(x_mix @ W, x_mix @ Y), rtol=1e-5)
  assert float(out.metrics["loss_cp"]) == 0.0
  loss2, out2, _, _ = run(recipe_, make_ctx(jax.random.key(0), epoch=3), state)
  assert float(out2.metrics["loss_cp"]) > 0
  np.testing.assert_allclose(loss2, loss + 2.5 * float(out2.metrics["loss_cp"]), rtol=1e-5)


def test_cp_mix_finetune_balanced_batches_in_inference_mode():
  ctx = make_ctx(jax.random.key(0))
  loss, _, [(x, _)], train = run(methods.CPMixFinetune(), ctx)
  assert train == [False]
  np.testing.assert_allclose(loss, np_ce(x @ W, x @ Y), rtol=1e-5)


# ----------------------------------------------------------------------------- OTmix / CMO

def id_images(seed=0):
  """Channel 0 holds id + 1 (decodable after CutMix), channel 1 a random pattern."""
  rng = np.random.default_rng(seed)
  ids = np.broadcast_to((np.arange(N) + 1)[:, None, None], (N, 8, 8))
  return np.stack([ids, rng.integers(0, 255, (N, 8, 8))], -1).astype(np.uint8)


def np_sinkhorn(cost, eps, iters=5000):
  n, m = cost.shape
  f, g = np.zeros(n), np.zeros(m)
  lse = lambda a, ax: a.max(ax) + np.log(np.exp(a - a.max(ax, keepdims=True)).sum(ax))
  for _ in range(iters):
    f = eps * np.log(1 / n) - eps * lse((g[None] - cost) / eps, 1)
    g = eps * np.log(1 / m) - eps * lse((f[:, None] - cost) / eps, 0)
  return np.exp((f[:, None] + g[None] - cost) / eps)


def test_otmix_pairs_are_row_argmax_of_the_plan():
  images = id_images()
  data = make_data(images)
  rng = np.random.default_rng(3)
  f_hat = rng.random((K, K)) * (1 - np.eye(K))
  f_hat /= f_hat.sum(1, keepdims=True)
  state = {"confusion": jnp.asarray(f_hat, jnp.float32), "draw": jnp.float32(0.0)}
  recipe_ = methods.get_recipe("otmix", num_epochs=10, alpha=1e4)
  clean = rng.choice(N, B, replace=False)
  ctx = make_ctx(jax.random.key(0), epoch=0, clean=clean, data=data)
  assert bool(recipe_.uses_ot(state, ctx.epoch, ctx.num_epochs))
  _, _, [(x, _)], train = run(recipe_, ctx, state, calls=(-1,))
  assert train == [False, True]
  ids = np.rint(x.reshape(B, 8, 8, 2)[..., 0] * 255).astype(int).reshape(B, -1) - 1
  bg = np.array([np.bincount(r).argmax() for r in ids])  # the box covers < half (lam ~ 0.5)
  fg = np.array([r[r != b][0] if (r != b).any() else b for r, b in zip(ids, bg)])
  z = lambda i: images[i].reshape(len(i), -1).astype(np.float64) / 255
  zf, zb = z(fg), z(clean)
  cos = (zf / np.linalg.norm(zf, axis=1, keepdims=True)) @ (
      zb / np.linalg.norm(zb, axis=1, keepdims=True)).T
  cost = 0.05 * (1 - cos) + 0.95 * (1 - f_hat[LABELS[fg]][:, LABELS[clean]])
  plan = np_sinkhorn(cost, 0.01)
  top2 = np.sort(plan, 1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 1e-3 * top2[:, 1]
  np.testing.assert_array_equal(bg[clear], clean[plan.argmax(1)][clear])
  assert clear.sum() >= B // 2


@pytest.mark.parametrize("gate,prob", [
    ("paper", lambda e: (e + 1) / 10),  # y ~ Bernoulli((t / T)^mu), t = e + 1 (sec. 3.3)
    ("code", lambda e: e / 10),  # np.random.binomial(1, (epoch / epochs) ** u), 0-based
])
def test_otmix_uses_ot_with_probability_t_over_T(gate, prob):
  recipe_ = methods.get_recipe("otmix", num_epochs=10, ot_gate=gate)
  data = make_data()
  evaluate = lambda x: {"logits": jnp.zeros((x.shape[0], K)),
                        "features": jnp.zeros((x.shape[0], 2))}
  state0 = recipe_.init_state(jnp.asarray(COUNTS))

  @jax.jit
  def gate_fn(key, epoch):
    state = recipe_.begin_epoch(state0, epoch, data, evaluate, key)
    return recipe_.uses_ot(state, epoch, 10)

  keys = jax.random.split(jax.random.key(0), 2000)
  for epoch in (0, 3, 9):
    used = int(jax.vmap(lambda k: gate_fn(k, epoch))(keys).sum())
    p = prob(epoch)
    if p in (0, 1):
      assert used == 2000 * p
    else:
      assert stats.binomtest(used, 2000, p).pvalue > 1e-3


def test_otmix_confusion_from_balanced_training_subset():
  recipe_ = methods.OTmix(confusion_per_class=5)
  images = id_images()
  data = make_data(images)
  seen = []

  def evaluate(x):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), x)
    ids = x[:, 0, 0, 0].astype(jnp.int32) - 1
    preds = jnp.where(jnp.asarray(LABELS)[ids] == 3, 3, (jnp.asarray(LABELS)[ids] + 1) % K)
    return {"logits": jax.nn.one_hot(preds, K), "features": x.reshape(x.shape[0], -1)}

  state = recipe_.begin_epoch(recipe_.init_state(jnp.asarray(COUNTS)), jnp.int32(0), data,
                              evaluate, jax.random.key(0))
  f_hat = np.asarray(state["confusion"])
  np.testing.assert_array_equal(np.diag(f_hat), 0.0)
  np.testing.assert_allclose(f_hat.sum(1), [1, 1, 1, 0], atol=1e-6)
  np.testing.assert_allclose(f_hat[:3], np.eye(K)[[1, 2, 3]])
  x = np.concatenate([np.asarray(s) for s in seen])
  assert x.dtype == np.uint8
  ids = x[:, 0, 0, 0].astype(int) - 1
  np.testing.assert_array_equal(x, images[ids])  # training images, unaugmented
  np.testing.assert_array_equal(np.bincount(LABELS[ids], minlength=K), 5)
  seen.clear()
  again = recipe_.begin_epoch(state, jnp.int32(1), data, evaluate, jax.random.key(1))
  np.testing.assert_array_equal(np.concatenate(seen), x)  # the same fixed subset
  assert float(again["draw"]) != float(state["draw"])


def test_cmo_pastes_one_foreground_box_and_labels_by_its_area():
  images = id_images()
  data = make_data(images)
  recipe_ = methods.get_recipe("cmo", num_epochs=10, mix_prob=1.0)
  assert recipe_.init_state(jnp.asarray(COUNTS)) == ()
  ctx = make_ctx(jax.random.key(4), data=data)
  loss, out, [(x, _)], train = run(recipe_, ctx)
  assert train == [True]  # no feature pass without OT
  ids = np.rint(x.reshape(B, 8, 8, 2)[..., 0] * 255).astype(int) - 1
  fore = np.asarray(out.draws["indices_fore"])
  # The pasted region, read off the output: one axis-aligned box shared by the batch.
  distinct = ~(ids == fore[:, None, None]).all(axis=(1, 2))
  boxes = ids[distinct] == fore[distinct, None, None]
  assert distinct.sum() >= B // 2 and (boxes == boxes[0]).all()
  box = boxes[0]
  assert 0 < box.sum() == box.any(1).sum() * box.any(0).sum()
  np.testing.assert_array_equal(ids[:, box], np.broadcast_to(fore[:, None], ids[:, box].shape))
  # Outside the box each row is one image of the clean batch, in a random pairing.
  back = ids[:, ~box][:, 0]
  np.testing.assert_array_equal(ids[:, ~box], np.broadcast_to(back[:, None],
                                                              ids[:, ~box].shape))
  np.testing.assert_array_equal(np.sort(back), np.sort(np.asarray(ctx.clean_indices)))
  # lam is the background's share of the area; the loss mixes the two sides' CE by it.
  lam = 1 - box.sum() / 64
  np.testing.assert_allclose(float(out.metrics["lam"]), lam, rtol=1e-6)
  logits = x[:, :N] @ W
  want = lam * np_ce(logits, Y[back]) + (1 - lam) * np_ce(logits, Y[fore])
  np.testing.assert_allclose(loss, want, rtol=1e-5)


# ----------------------------------------------------------------------------- registry

def test_registry_names_and_epoch_defaults():
  assert len(methods.METHODS) == 33
  for name in methods.METHODS:
    r = methods.get_recipe(name, num_epochs=200)
    assert r.name == name
    assert r.__doc__
  assert methods.get_recipe("drw", num_epochs=200).criterion.drw_epoch == 160
  assert methods.get_recipe("mamix_drw", num_epochs=100).criterion.drw_epoch == 80
  assert methods.get_recipe("otmix_drw", num_epochs=240).criterion.drw_epoch == 160
  assert methods.get_recipe("cp_mix", num_epochs=300).stage2_epoch == 200
  assert methods.get_recipe("lobm_star", num_epochs=200).defer_epoch == 160
  assert methods.get_recipe("ldam_drw", num_epochs=10).head == "normalized"
  assert methods.get_recipe("dbn_mix", num_epochs=10).branches == 2
  # Each DRW method reduces its weighted loss as its reference code does (SPEC section 5).
  reductions = {name: methods.get_recipe(name, num_epochs=200).criterion.reduction
                for name in ("drw", "ldam_drw", "mixup_drw", "remix_drw", "mamix_drw",
                             "smote_mix_drw", "neighbor_mix_drw", "otmix_drw", "otmix_ldam")}
  assert reductions == {"drw": "normalized", "ldam_drw": "normalized", "mixup_drw": "mean",
                        "remix_drw": "mean", "mamix_drw": "mean", "smote_mix_drw": "mean",
                        "neighbor_mix_drw": "mean", "otmix_drw": "normalized",
                        "otmix_ldam": "normalized"}
  r = methods.get_recipe("mixup_drw", num_epochs=200, drw_epoch=100, alpha=0.5)
  assert (r.criterion.drw_epoch, r.alpha) == (100, 0.5)
  for name in reductions:  # test_engine_keys.py: the override reaches the trained loss
    assert methods.get_recipe(name, num_epochs=200, beta=0.99).criterion.beta == 0.99


@pytest.mark.parametrize("name,kwargs", [("nope", {}), ("mixup", {"bogus": 1}),
                                         ("mixup", {"alpha": -1.0}),
                                         ("mixup", {"label_rule": "cpmix"}),
                                         ("dbn_mix", {"temperature": "hot"}),
                                         ("dbn_mix", {"kind": "ce"}),
                                         ("cp_mix", {"t": 2.0}),
                                         ("otmix", {"mix_prob": 1.5}),
                                         ("smote_mix", {"pairing": "psychic"}),
                                         ("drw", {"beta": 1.5})])
def test_registry_rejects_invalid(name, kwargs):
  with pytest.raises(ValueError):
    methods.get_recipe(name, num_epochs=10, **kwargs)


class LogitsOnly(nn.Module):
  head: str = "linear"

  @nn.compact
  def __call__(self, x, train):
    return {"logits": nn.Dense(K)(x.reshape(x.shape[0], -1))}


def test_check_compatible():
  single = models_lib.small_cnn(K)
  dual = models_lib.dual_small_cnn(K)
  x = np.zeros((2, 8, 8, 1), np.float32)
  get = lambda n: methods.get_recipe(n, num_epochs=10)
  methods.check_compatible(get("dbn_mix"), dual)
  methods.check_compatible(get("dbn_mix"), dual, x)
  with pytest.raises(ValueError, match="dual-branch"):
    methods.check_compatible(get("dbn_mix"), single)
  with pytest.raises(ValueError, match="dual-branch"):
    methods.check_compatible(get("dbn_mix"), single, x)
  for name in ("otmix", "smote_mix", "neighbor_mix"):
    methods.check_compatible(get(name), single, x)
    with pytest.raises(ValueError, match="features"):
      methods.check_compatible(get(name), LogitsOnly(), x)
  methods.check_compatible(methods.Mixup(pairing="smote", pairing_space="pixels"),
                           LogitsOnly(), x)
  methods.check_compatible(get("cmo"), LogitsOnly(), x)
  with pytest.raises(ValueError, match="normalised"):
    methods.check_compatible(get("ldam_drw"), single)
  methods.check_compatible(get("ldam_drw"), models_lib.small_cnn(K, head="normalized"))
  ride_model = models_lib.ride_small_cnn(K, head="normalized", widths=(8, 16))
  for name in ("ride", "ride_ea", "ride_cmo", "otmix_ride", "cp_mix_ride"):
    methods.check_compatible(get(name), ride_model)
    methods.check_compatible(get(name), ride_model, x)
    with pytest.raises(ValueError, match="multi-expert model"):
      methods.check_compatible(get(name), models_lib.small_cnn(K, head="normalized"), x)
    with pytest.raises(ValueError, match="multi-expert model"):
      methods.check_compatible(get(name), models_lib.small_cnn(K, head="normalized"))
  # Without RIDE's flag a recipe trains a multi-expert model too (RIDE's loss, not required).
  methods.check_compatible(get("ldam_drw"), ride_model, x)


# ----------------------------------------------------------------------------- draw laws

def drawn_classes(recipe_, name, draws=300):
  """Classes of the dataset indices `name` that `recipe_` drew over `draws` steps."""
  out = [run(recipe_, make_ctx(jax.random.key(seed))).out.draws[name] for seed in range(draws)]
  return LABELS[np.concatenate([np.asarray(d) for d in out])]


@pytest.mark.parametrize("r", [1.0, 0.0])
def test_otmix_foreground_follows_its_inverse_power_law(r):
  """OTmix eq. 3: P(class k) ~ n_k^-r for the foreground batch (r = 0: class-balanced)."""
  classes = drawn_classes(methods.OTmix(ot=False, r=r), "indices_fore")
  law = COUNTS.astype(np.float64) ** -r
  observed = np.bincount(classes, minlength=K)
  assert stats.chisquare(observed, observed.sum() * law / law.sum()).pvalue > 1e-3


def test_bilateral_reverse_batch_is_class_balanced_and_uniform_batch_is_the_clean_one():
  recipe_ = methods.get_recipe("sbn_mix", num_epochs=10)
  observed = np.bincount(drawn_classes(recipe_, "indices_v"), minlength=K)
  assert stats.chisquare(observed).pvalue > 1e-3
  ctx = make_ctx(jax.random.key(0))
  np.testing.assert_array_equal(run(recipe_, ctx).out.draws["indices_u"], ctx.clean_indices)
