"""OTmix's pairing (`ltjax.pairing`) against POT, the OT library of the authors' code.

Reference semantics (JintongGao/Enhancing-Minority-Classes-by-Mixing,
`final_otmix/cifar_train.py` `train_OTmix`; paper: Gao et al., sec. 3.2, eq. 4-8,
/work/shared/seeds/003_*.txt):

- Cost, rows foreground q1, columns background q2:
  `M[q1, q2] = w (1 - cos(f2[q1], f[q2])) + (1 - w)(1 - cf[y_fore[q1], y_back[q2]])`,
  w = 0.05, `cos` = `nn.CosineSimilarity(dim=-1, eps=1e-8)`, cf the confusion matrix with
  each full row normalised to 1 (`cf / cf.sum(axis=1)[:, None]`), then its diagonal set to 0,
  rows not renormalised (paper eq. 7: "set the diagonal element in F to 0"). Transcribed in
  float64 numpy here and compared with `pairing.ot_cost` (float32).
- Plan: `T = ot.sinkhorn(a, b, M, reg=0.01)` with uniform marginals a = b = 1/B (paper eq.
  4, entropic OT; eps = 0.01). The reference plan is POT's log-domain Sinkhorn
  (`ot.bregman.sinkhorn_log`) in float64, run to convergence; the code's own call (POT's
  default plain-domain `method="sinkhorn"`, `numItermax=1000`, `stopThr=1e-9`, float64 since
  the code's `cf_scale` is float64) is checked against it where POT reports convergence.
- Pairs (eq. 8): foreground k takes background `argmax_j T[k, j]` (repeats allowed).

Problems are OTmix-shaped: CIFAR-10-LT (rho = 100) class counts, a background batch drawn
like the instance-balanced loader (P(k) ~ n_k), a foreground batch like the paper's
inverse-frequency sampler (P(k) ~ 1 / n_k), B = 8 .. 128; features of a random conv net
(conv-BN-ReLU x 2, training-mode batch norm), pooled (ltjax's default "features") or
un-pooled (the CIFAR code's `model_f`); F_hat from a simulated long-tailed classifier's
confusion on a balanced evaluation set, and the all-zero F_hat of ltjax's first epoch.

tests/test_pairing.py already checks `ot_cost` on a small random problem, and the plan and
the pairs against its own numpy Sinkhorn on small random costs; this module covers POT, the
OTmix-shaped costs and sizes, the code's plain-domain call, and the pairs from features.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import pairing

ot = pytest.importorskip("ot", reason="POT (the OTmix code's OT library) is needed: "
                                      "pip install -e '.[parity]'")
torch = pytest.importorskip("torch", reason="the random conv-net features need PyTorch")

COUNTS = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])  # CIFAR-10-LT, 100
K = len(COUNTS)
W = 0.05
THRESHOLD = 1e-4  # ltjax's default stopping threshold (L1 error of the column marginal)


# ------------------------------------------------------------------------- problems

def confusion_counts(seed: int, per_class: int = 100) -> np.ndarray:
  """Confusion counts of a simulated long-tailed classifier on a balanced evaluation set:
  accuracy falls from 0.95 (head) to 0.35 (tail), mistakes go to class j with P ~ n_j."""
  rng = np.random.default_rng(seed)
  accuracy = 0.95 - 0.6 * np.arange(K) / (K - 1)
  counts = np.zeros((K, K))
  for k in range(K):
    wrong = COUNTS.astype(np.float64).copy()
    wrong[k] = 0
    probs = (1 - accuracy[k]) * wrong / wrong.sum()
    probs[k] = accuracy[k]
    counts[k] = rng.multinomial(per_class, probs)
  return counts


def f_hat(counts: np.ndarray) -> np.ndarray:
  """Paper eq. 7 / the code: full rows normalised to 1, then the diagonal set to 0."""
  cf = counts / counts.sum(axis=1)[:, None]
  np.fill_diagonal(cf, 0.0)
  return cf


@functools.lru_cache(maxsize=None)
def conv_features(seed: int, num: int, pooled: bool) -> np.ndarray:
  """(num, D) float64 features of a random conv net on random 16x16 images."""
  gen = torch.Generator().manual_seed(seed)
  net = torch.nn.Sequential(
      torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
      torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
      torch.nn.BatchNorm2d(32), torch.nn.ReLU()).double()
  with torch.no_grad():
    for m in net:
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64)
                       * np.sqrt(2.0 / fan_in))
    x = torch.randint(0, 256, (num, 3, 16, 16), generator=gen).double() / 255.0
    z = net((x - 0.5) / 0.25)  # training mode: batch statistics
  return (z.mean(dim=(2, 3)) if pooled else z.flatten(1)).numpy()


def problem(seed: int, batch: int, pooled: bool = True, zero_confusion: bool = False):
  """(z_fore, z_back, y_fore, y_back, F_hat) of one OTmix step."""
  rng = np.random.default_rng(seed)
  z = conv_features(seed, 2 * batch, pooled)
  y_back = rng.choice(K, batch, p=COUNTS / COUNTS.sum())
  inverse = 1.0 / COUNTS
  y_fore = rng.choice(K, batch, p=inverse / inverse.sum())
  cf = np.zeros((K, K)) if zero_confusion else f_hat(confusion_counts(seed))
  return z[:batch], z[batch:], y_fore, y_back, cf


def reference_cost(z_fore, z_back, y_fore, y_back, cf, w: float = W) -> np.ndarray:
  """Float64 transcription of the code's `M` (nn.CosineSimilarity with eps = 1e-8)."""
  dots = z_fore @ z_back.T
  norms = np.linalg.norm(z_fore, axis=1)[:, None] * np.linalg.norm(z_back, axis=1)[None, :]
  cos = dots / np.maximum(norms, 1e-8)
  return w * (1 - cos) + (1 - w) * (1 - cf[y_fore][:, y_back])


def reference_plan(cost: np.ndarray, eps: float) -> np.ndarray:
  """POT's float64 log-domain Sinkhorn, uniform marginals, run to convergence."""
  n, m = cost.shape
  plan, log = ot.bregman.sinkhorn_log(np.full(n, 1 / n), np.full(m, 1 / m), cost, eps,
                                      numItermax=200_000, stopThr=1e-13, log=True)
  assert np.abs(plan.sum(axis=0) - 1 / m).sum() < 1e-12, f"POT did not converge: {log['err']}"
  return plan


def code_call_plan(cost: np.ndarray, eps: float) -> tuple[np.ndarray, bool]:
  """`ot.sinkhorn(a, b, M, reg=eps)` as the code calls it (plain domain, 1000 iterations,
  stopThr 1e-9); returns (plan, converged)."""
  n = cost.shape[0]
  a = np.full(n, 1 / n)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    plan = ot.sinkhorn(a, a, cost, eps)
  converged = not any("converge" in str(c.message).lower() for c in caught)
  return plan, converged and bool(np.isfinite(plan).all())


def check_pairs(pairs: np.ndarray, plan: np.ndarray, near: float = 1e-3) -> None:
  """Every pair is (near-)maximal in its reference row, and exactly the argmax wherever the
  row's two largest entries are more than `near` (relative) apart."""
  rows = np.arange(len(plan))
  best = plan.max(axis=1)
  chosen = plan[rows, pairs]
  assert (chosen >= (1 - near) * best).all(), (
      f"rows {np.flatnonzero(chosen < (1 - near) * best)}: ltjax {pairs}, "
      f"reference {plan.argmax(axis=1)}")
  top2 = np.sort(plan, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > near * top2[:, 1]
  np.testing.assert_array_equal(pairs[clear], plan.argmax(axis=1)[clear])


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _solve(cost, eps, max_iterations=1000, threshold=THRESHOLD):
  return pairing.solve_sinkhorn(cost, eps, max_iterations, threshold)


_pairs = jax.jit(pairing.ot_pairs, static_argnums=(1,))


@functools.partial(jax.jit, static_argnums=(5, 6))
def _pairs_from_features(z_fore, z_back, y_fore, y_back, cf, w, eps):
  return pairing.ot_pairs(pairing.ot_cost(z_fore, z_back, y_fore, y_back, cf, w), eps)


# ------------------------------------------------------------------------- tests

@pytest.mark.parametrize("batch", [8, 32, 128])
@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "unpooled"])
def test_cost_matches_float64_transcription(batch, pooled):
  z_fore, z_back, y_fore, y_back, cf = problem(batch, batch, pooled)
  want = reference_cost(z_fore, z_back, y_fore, y_back, cf)
  got = np.asarray(pairing.ot_cost(jnp.asarray(z_fore, jnp.float32),
                                   jnp.asarray(z_back, jnp.float32), y_fore, y_back,
                                   jnp.asarray(cf, jnp.float32), W), np.float64)
  assert got.shape == (batch, batch)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # float32 rounding of [0, 2]
  with jax.enable_x64(True):
    got64 = np.asarray(pairing.ot_cost(z_fore, z_back, y_fore, y_back, cf, W))
  np.testing.assert_allclose(got64, want, rtol=0, atol=1e-13)


def test_realistic_f_hat_has_the_paper_normalisation():
  """Rows sum to the class's error rate (tail classes more confused), zero diagonal."""
  counts = confusion_counts(0)
  cf = f_hat(counts)
  np.testing.assert_allclose(cf.sum(axis=1), 1 - np.diag(counts) / counts.sum(axis=1))
  assert (np.diag(cf) == 0).all() and cf.sum(axis=1)[-1] > cf.sum(axis=1)[0]
  np.testing.assert_allclose(np.asarray(pairing.normalized_confusion(counts)), cf, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("batch", [8, 32, 128])
def test_plan_and_pairs_match_pot(batch, eps):
  """float32 ltjax (default threshold) against POT's converged float64 plan."""
  for seed, pooled, zero in [(batch, True, False), (batch + 1, False, False),
                             (batch + 2, True, True)]:
    z_fore, z_back, y_fore, y_back, cf = problem(seed, batch, pooled, zero)
    cost = reference_cost(z_fore, z_back, y_fore, y_back, cf)
    want = reference_plan(cost, eps)
    result = _solve(jnp.asarray(cost, jnp.float32), eps)
    plan = np.asarray(result.plan, np.float64)
    assert bool(result.converged) and float(result.error) < THRESHOLD
    l1 = np.abs(plan - want).sum()
    assert l1 < 2 * THRESHOLD, f"seed {seed}: plan L1 distance {l1:.2e}"
    np.testing.assert_allclose(plan.sum(axis=1), 1 / batch, rtol=1e-3)
    check_pairs(np.asarray(_pairs(jnp.asarray(cost, jnp.float32), eps)), want)
    # End to end: float32 features -> ltjax cost -> pairs.
    check_pairs(np.asarray(_pairs_from_features(
        jnp.asarray(z_fore, jnp.float32), jnp.asarray(z_back, jnp.float32), y_fore, y_back,
        jnp.asarray(cf, jnp.float32), W, eps)), want)


@pytest.mark.parametrize("batch", [8, 128])
def test_tight_threshold_plan_matches_pot_where_converged(batch):
  """With a tight threshold the float32 plan approaches POT's to the float32 floor; at
  eps = 0.01 that floor (about 3e-6 in L1) may stop it first: compare where it converged."""
  compared = 0
  for eps in (0.01, 0.05):
    z_fore, z_back, y_fore, y_back, cf = problem(7 * batch, batch, True)
    cost = reference_cost(z_fore, z_back, y_fore, y_back, cf)
    want = reference_plan(cost, eps)
    result = _solve(jnp.asarray(cost, jnp.float32), eps, 5000, 1e-6)
    plan = np.asarray(result.plan, np.float64)
    assert np.abs(plan - want).sum() < 1e-5  # the float32 floor, converged or not
    if bool(result.converged):
      compared += 1
      assert np.abs(plan - want).sum() < 2e-6
  assert compared >= 1


def test_float64_plan_matches_pot():
  with jax.enable_x64(True):
    for batch, eps in [(8, 0.01), (32, 0.01), (128, 0.05)]:
      z_fore, z_back, y_fore, y_back, cf = problem(3 * batch, batch, False)
      cost = reference_cost(z_fore, z_back, y_fore, y_back, cf)
      want = reference_plan(cost, eps)
      result = _solve(jnp.asarray(cost), eps, 20_000, 1e-12)
      assert result.plan.dtype == jnp.float64 and bool(result.converged)
      np.testing.assert_allclose(np.asarray(result.plan), want, rtol=0, atol=1e-10 / batch)


@pytest.mark.parametrize("batch", [8, 32, 128])
def test_pairs_match_the_codes_plain_domain_sinkhorn_call(batch):
  """The code's `ot.sinkhorn(a, b, M, reg=0.01)` (float64, plain domain): where POT says it
  converged, its plan is the log-domain one and its row argmax is ltjax's pairing."""
  converged = 0
  for seed in range(3):
    z_fore, z_back, y_fore, y_back, cf = problem(100 + seed, batch, seed != 1, seed == 2)
    cost = reference_cost(z_fore, z_back, y_fore, y_back, cf)
    code_plan, ok = code_call_plan(cost, 0.01)
    if not ok:
      continue
    converged += 1
    np.testing.assert_allclose(code_plan, reference_plan(cost, 0.01), rtol=0,
                               atol=1e-8 / batch)
    check_pairs(np.asarray(_pairs(jnp.asarray(cost, jnp.float32), 0.01)), code_plan)
  assert converged >= 2, "POT's plain-domain call should converge on these costs"
