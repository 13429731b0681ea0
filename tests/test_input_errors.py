"""Invalid inputs of the primitives: eager ValueErrors that name the argument, and the
documented results under `jit`, where values cannot be checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import label_rules, longtail, mixing, samplers

# Class 1 has no samples: labels 0, 0, 2, 2, 2, 3.
LABELS = np.array([0, 2, 0, 2, 3, 2])
INDEX = samplers.build_class_index(LABELS, 4, allow_empty=True)
LAW_ARGS = {"instance": {}, "class_balanced": {}, "reverse": {"gamma": 2.0},
            "inverse_power": {"r": 0.5}}
NUM_DRAWS = 4000


def _law(name):
  return lambda counts: samplers.class_probs(name, counts, **LAW_ARGS[name])


# --- class laws and draws ---------------------------------------------------------------

@pytest.mark.parametrize("name", samplers.SAMPLERS)
@pytest.mark.parametrize("zeros", [np.zeros(3, np.int64), jnp.zeros(3, jnp.int32)])
def test_class_laws_reject_all_zero_counts(name, zeros):
  with pytest.raises(ValueError, match="counts are all zero"):
    _law(name)(zeros)


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_class_laws_of_all_zero_counts_are_nan_under_jit(name):
  probs = np.asarray(jax.jit(_law(name))(jnp.zeros(3, jnp.int32)))
  assert probs.shape == (3,) and np.isnan(probs).all()


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_class_laws_name_negative_counts(name):
  with pytest.raises(ValueError, match="counts must be non-negative"):
    _law(name)(np.array([3, -1, 2]))


@pytest.mark.parametrize("probs, message", [
    ([0.4, 0.1, 0.3, 0.2], r"class 1 has no training samples but probability 0\.1"),
    ([0.5, -0.2, 0.5, 0.2], r"probs has negative entries at \[1\]"),
    ([0.5, 0.0, np.nan, 0.5], r"probs has non-finite entries at \[2\]"),
    ([0.0, 0.0, 0.0, 0.0], "probs are all zero"),
])
def test_draw_indices_rejects_invalid_probs(probs, message):
  with pytest.raises(ValueError, match=message):
    samplers.draw_indices(jax.random.key(0), INDEX, jnp.asarray(probs, jnp.float32), 8)


def test_draw_indices_lists_every_empty_class_with_probability():
  index = samplers.build_class_index(np.array([0, 2]), 4, allow_empty=True)
  with pytest.raises(ValueError, match=r"class 1 .* 0\.25; class 3 .* 0\.25"):
    samplers.draw_indices(jax.random.key(0), index, jnp.full(4, 0.25), 8)


def _jit_draw(probs):
  fn = jax.jit(samplers.draw_indices, static_argnums=3)
  return np.asarray(fn(jax.random.key(5), INDEX, jnp.asarray(probs, jnp.float32), NUM_DRAWS))


def test_jit_draws_skip_empty_classes_and_renormalise():
  # Class 1 is empty: under jit its 0.3 is dropped and classes 0, 2, 3 keep 2 : 4 : 1.
  draws = _jit_draw([0.2, 0.3, 0.4, 0.1])
  assert (draws >= 0).all()
  freq = np.bincount(LABELS[draws], minlength=4) / NUM_DRAWS
  expected = np.array([0.2, 0.0, 0.4, 0.1]) / 0.7
  sigma = np.sqrt(expected * (1 - expected) / NUM_DRAWS)
  assert (np.abs(freq - expected) <= 5 * sigma + 1e-12).all(), freq


def test_jit_draws_never_take_classes_with_negative_probability():
  draws = _jit_draw([0.5, 0.0, -0.5, 0.5])
  assert (draws >= 0).all()
  assert set(LABELS[draws].tolist()) == {0, 3}


@pytest.mark.parametrize("probs", [[np.nan] * 4, [0.0, 0.7, 0.0, 0.0], [-1.0] * 4])
def test_jit_draws_are_minus_one_when_no_class_can_be_drawn(probs):
  np.testing.assert_array_equal(_jit_draw(probs), -1)


def test_jit_draw_of_all_zero_counts_law_is_minus_one():
  @jax.jit
  def draw(key, counts):
    return samplers.draw_indices(key, INDEX, samplers.class_balanced_probs(counts), 16)

  np.testing.assert_array_equal(draw(jax.random.key(0), jnp.zeros(4, jnp.int32)), -1)


def test_concrete_counts_are_checked_while_tracing():
  counts = jnp.zeros(4, jnp.int32)  # a constant of the traced function: known at trace time
  with pytest.raises(ValueError, match="counts are all zero"):
    jax.jit(lambda: samplers.class_balanced_probs(counts))()


def test_draw_from_classes_rejects_empty_classes():
  with pytest.raises(ValueError, match=r"classes \[1\] have no training samples"):
    samplers.draw_from_classes(jax.random.key(0), INDEX, jnp.array([0, 1, 2, 1]))
  with pytest.raises(ValueError, match="classes out of range"):
    samplers.draw_from_classes(jax.random.key(0), INDEX, jnp.array([0, 4]))


def test_draw_from_classes_under_jit_marks_empty_classes_minus_one():
  classes = jnp.array([0, 1, 2, 3, 1, 0])
  got = np.asarray(jax.jit(samplers.draw_from_classes)(jax.random.key(1), INDEX, classes))
  empty = np.asarray(classes) == 1
  np.testing.assert_array_equal(got[empty], -1)
  np.testing.assert_array_equal(LABELS[got[~empty]], np.asarray(classes)[~empty])


def test_subsample_rejects_all_zero_counts():
  with pytest.raises(ValueError, match="counts are all zero"):
    longtail.subsample(LABELS, [0, 0, 0, 0], seed=0)


# --- label rules: shapes --------------------------------------------------------------

RULES_WITH_COUNTS = [label_rules.vanilla, label_rules.remix, label_rules.mamix,
                     label_rules.mamix_reference, label_rules.cpmix]


@pytest.mark.parametrize("rule", RULES_WITH_COUNTS, ids=lambda r: r.__name__)
@pytest.mark.parametrize("use_jit", [False, True])
def test_label_rules_name_mismatched_count_shapes(rule, use_jit):
  fn = jax.jit(rule) if use_jit else rule
  with pytest.raises(ValueError, match=r"n_a \(4,\), n_b \(3,\)"):
    fn(jnp.full(4, 0.3), jnp.full(4, 50.0), jnp.full(3, 5.0))


@pytest.mark.parametrize("rule", RULES_WITH_COUNTS, ids=lambda r: r.__name__)
def test_label_rules_name_mismatched_lam_shape(rule):
  with pytest.raises(ValueError, match=r"lam \(5,\), n_a \(4,\), n_b \(4,\)"):
    rule(jnp.full(5, 0.3), jnp.full(4, 50.0), jnp.full(4, 5.0))


def test_label_rules_still_broadcast_scalars():
  lam_y = label_rules.remix(0.2, jnp.array([30.0, 10.0]), 10.0)
  np.testing.assert_allclose(lam_y, [0.0, 0.2])  # 30 / 10 >= kappa and lam < tau: 0


# --- mixing: shapes -------------------------------------------------------------------

IMAGES = jnp.zeros((4, 8, 8, 3))


@pytest.mark.parametrize("call, message", [
    (lambda: mixing.mix_inputs(jnp.ones((4, 3)), jnp.ones((4, 2)), 0.5),
     r"x_a and x_b must have the same shape, got \(4, 3\) and \(4, 2\)"),
    (lambda: mixing.mix_inputs(jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.full(3, 0.5)),
     r"lam must be a scalar or have shape \(4,\)"),
    (lambda: mixing.mix_labels(jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.full(3, 0.5)),
     r"lam_y must be a scalar or have shape \(4,\)"),
    (lambda: mixing.MixedLabels(jnp.zeros(4, int), jnp.zeros(3, int), 0.5).soft(3),
     r"labels_b must have shape \(4,\), got \(3,\)"),
    (lambda: mixing.paste_box(IMAGES, jnp.zeros((4, 8, 7, 3)), (0, 2, 0, 2)),
     r"x_back and x_fore must have the same shape"),
    (lambda: mixing.paste_box(IMAGES[0], IMAGES[0], (0, 2, 0, 2)),
     r"x_back must be \(B, H, W, C\) images, got shape \(8, 8, 3\)"),
    (lambda: mixing.paste_box(IMAGES, IMAGES, (jnp.zeros(3, int),) * 4),
     r"box bounds must have shape \(4,\), got \(3,\)"),
    (lambda: mixing.box_mask((jnp.zeros(3, int), jnp.ones(2, int), 0, 1), 8, 8),
     r"box bound y1 must have shape \(3,\), got \(2,\)"),
    (lambda: mixing.box_mask((0, 1, 0), 8, 8), r"box must be \(y0, y1, x0, x1\)"),
    (lambda: mixing.cutmix_box(jax.random.key(0), jnp.full((2, 2), 0.5), 8, 8),
     r"lam must be a scalar or a \(B,\) vector, got shape \(2, 2\)"),
    (lambda: mixing.cutmix(jax.random.key(0), IMAGES[..., 0], IMAGES[..., 0], 0.5),
     r"x_back must be \(B, H, W, C\) images"),
])
def test_mixing_names_mismatched_shapes(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_mixing_shape_errors_are_raised_under_jit():
  with pytest.raises(ValueError, match="box bounds must have shape"):
    jax.jit(mixing.paste_box)(IMAGES, IMAGES, (jnp.zeros(3, int),) * 4)


def test_paste_box_takes_python_int_bounds():
  back = np.zeros((2, 5, 6, 1), np.float32)
  fore = np.ones_like(back)
  mixed, lam_back = mixing.paste_box(back, fore, (1, 3, 2, 5))
  expected = back.copy()
  expected[:, 1:3, 2:5] = 1.0
  np.testing.assert_array_equal(mixed, expected)
  assert float(lam_back) == pytest.approx(1 - 6 / 30)
