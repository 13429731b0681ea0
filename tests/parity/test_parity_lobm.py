"""Parity of LOBM and LOBM* with the LOBM paper (no public code): seeds/000, section 3.

Reference semantics transcribed here (Zhang et al., "Label-occurrence-balanced mixup for
long-tailed recognition", sec. 3.1-3.2, 4.2):
- two independent class-balanced samplers S1, S2 (eq. 4-5): class k with probability
  p_k = 1/C, then an example uniformly inside the class, so P_i = 1 / (n_k C); both points
  are drawn "from the whole dataset independently, which are not limited in the same
  mini-batch";
- vanilla mixup of the pair (eq. 6-7): `x = lam x^S1 + (1 - lam) x^S2`,
  `y = lam y^S1 + (1 - lam) y^S2`, `lam ~ Beta(alpha, alpha)` (alpha = 1 on CIFAR, sec.
  4.2); one lambda per batch (the mixup reference code's convention, SPEC section 3);
- the loss is the cross-entropy of the mixed soft label, `-sum_k y_k log softmax(z)_k`,
  averaged over the batch (no re-weighting);
- LOBM* (deferred re-balancing, end of sec. 3.2): "first trains with vanilla mixup before
  annealing the learning rate, and then uses the proposed label-occurrence-balanced
  mixup": before `defer_epoch` the pair is the instance-balanced batch and a random
  permutation of it (`x = lam x + (1 - lam) x[perm]`); the first decay of the CIFAR
  schedule is epoch 160 of 200 (sec. 4.2).

The PyTorch step gets ltjax's draws (the two index vectors and lambda) and rebuilds the
batch, the soft labels and the loss itself. The class law of the samplers is checked
statistically on many engine draws (chi-square: 1/K per side, uniform inside each class,
independence of the two sides).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ltjax import methods
from parity import harness
from parity.harness import F

DEFER_EPOCH = 2
P_MIN = 1e-3


def mixup_ce_step(model, draws, epoch):
  """eq. 6-7 and the cross-entropy of the soft label, mean over the batch."""
  del epoch
  idx_1, idx_2 = draws["indices_a"], draws["indices_b"]
  lam = float(draws["lam"])
  x = lam * harness.torch_inputs(idx_1) + (1 - lam) * harness.torch_inputs(idx_2)
  y = (lam * F.one_hot(harness.torch_labels(idx_1), harness.K).float()
       + (1 - lam) * F.one_hot(harness.torch_labels(idx_2), harness.K).float())
  return -(y * F.log_softmax(model(x), dim=1)).sum(dim=1).mean()


def test_lobm_matches_paper_step():
  run = harness.LtjaxRun(methods.get_recipe("lobm", num_epochs=10))
  schedule = harness.clean_schedule(4, seed=0, epoch=0)
  draws = harness.replay(run, harness.TorchSmallCNN(), mixup_ce_step, schedule)
  # The pairs come from the whole dataset, not from the step's instance-balanced batch.
  outside = [np.setdiff1d(np.r_[d["indices_a"], d["indices_b"]], idx).size
             for d, (_, idx) in zip(draws, schedule)]
  assert sum(outside) > 0


def test_lobm_star_matches_paper_step_on_both_sides_of_defer_epoch():
  recipe = methods.get_recipe("lobm_star", num_epochs=10, defer_epoch=DEFER_EPOCH)
  run = harness.LtjaxRun(recipe)
  schedule = (harness.clean_schedule(3, seed=0, epoch=DEFER_EPOCH - 1)
              + harness.clean_schedule(3, seed=1, epoch=DEFER_EPOCH))
  draws = harness.replay(run, harness.TorchSmallCNN(), mixup_ce_step, schedule)
  for d, (epoch, idx) in zip(draws, schedule):
    if epoch < DEFER_EPOCH:  # vanilla mixup: the clean batch and a permutation of it
      np.testing.assert_array_equal(d["indices_a"], idx)
      np.testing.assert_array_equal(np.sort(d["indices_b"]), np.sort(idx))
    else:
      assert not np.array_equal(d["indices_a"], idx)


def test_lobm_star_defers_to_first_lr_decay():
  """CIFAR: 200 epochs, decays at 160 and 180 (sec. 4.2): LOBM from epoch 160."""
  assert methods.get_recipe("lobm_star", num_epochs=200).defer_epoch == 160
  assert methods.get_recipe("lobm", num_epochs=200).defer_epoch is None
  assert methods.get_recipe("lobm", num_epochs=200).alpha == 1.0


def engine_draws(name: str, steps: int, epoch: int, **overrides) -> tuple:
  run = harness.LtjaxRun(methods.get_recipe(name, num_epochs=10, **overrides))
  idx = harness.clean_schedule(1, seed=0)[0][1]
  side_a, side_b = [], []
  for _ in range(steps):
    _, d = run.step(epoch, idx)
    side_a.append(d["indices_a"])
    side_b.append(d["indices_b"])
  return np.concatenate(side_a), np.concatenate(side_b)


def check_class_balanced_pairs(idx_a: np.ndarray, idx_b: np.ndarray) -> None:
  """eq. 4-5 for both samplers, and their independence."""
  k = harness.K
  cls_a, cls_b = harness.LABELS[idx_a], harness.LABELS[idx_b]
  for side, cls in (("S1", cls_a), ("S2", cls_b)):
    p = stats.chisquare(np.bincount(cls, minlength=k)).pvalue  # against 1/K
    assert p > P_MIN, f"{side}: class frequencies {np.bincount(cls, minlength=k)}, p={p:.1e}"
  joint = np.zeros((k, k), int)
  np.add.at(joint, (cls_a, cls_b), 1)
  p_ind = stats.chi2_contingency(joint).pvalue
  assert p_ind > P_MIN, f"the two samplers look dependent: {joint.tolist()}, p={p_ind:.1e}"
  p_joint = stats.chisquare(joint.ravel()).pvalue  # against 1/K^2 per cell
  assert p_joint > P_MIN, f"pair classes not uniform over K x K: p={p_joint:.1e}"
  both = np.r_[idx_a, idx_b]
  for c in range(k):  # uniform inside each class: P_i = 1 / (n_k K)
    members = np.flatnonzero(harness.LABELS == c)
    hits = np.array([(both == i).sum() for i in members])
    p_in = stats.chisquare(hits).pvalue
    assert p_in > P_MIN, f"class {c}: non-uniform inside the class, p={p_in:.1e}"


def test_lobm_samplers_class_law():
  """400 steps x 8 pairs: chi-square of each side, of the pair table and inside classes."""
  check_class_balanced_pairs(*engine_draws("lobm", 400, epoch=0))


def test_lobm_star_samplers_class_law_after_defer():
  check_class_balanced_pairs(*engine_draws("lobm_star", 400, epoch=DEFER_EPOCH,
                                           defer_epoch=DEFER_EPOCH))
