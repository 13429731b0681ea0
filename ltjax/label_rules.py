"""Label rules: the label factor lam_y of a mixed pair from its input factor lam.

For a pair (x_a, y_a), (x_b, y_b) mixed as x = lam x_a + (1 - lam) x_b, a rule returns
lam_y and the label is y = lam_y y_a + (1 - lam_y) y_b (`ltjax.mixing.mix_labels`).
`n_a`, `n_b` are the training-set counts of the classes of the two sides. Every rule is
elementwise: lam is a scalar or (B,), n_a and n_b are (B,) (or scalars), and the result
broadcasts them; shapes that do not broadcast raise a ValueError naming lam, n_a and n_b
(at trace time, so under `jit` too). Hyperparameters are Python floats, validated at trace
time.

| rule              | lam_y                                                         | paper            |
|-------------------|---------------------------------------------------------------|------------------|
| vanilla           | lam                                                           | mixup            |
| remix             | 0 / 1 when one side is kappa-majority and dominates the input | Remix (Chou 2020)|
| mamix             | piecewise linear through (m, 0.5), m = eta_b / (eta_a + eta_b)| MAMix, eq. 16    |
| mamix_reference   | same law, reference-package convention (lam on x_b)           | ImbalancedDL code|
| cpmix             | t lam + (1 - t) n_b / (n_a + n_b)                             | CP-Mix           |
| bilateral         | (max(lam, 1 - lam), min(lam, 1 - lam))                        | DBN-Mix          |
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ltjax import _checks

Rule = Callable[[ArrayLike, ArrayLike, ArrayLike], jax.Array]


def _float(x: ArrayLike) -> jax.Array:
  return jnp.asarray(x, dtype=jnp.result_type(float))


def _lam(lam: ArrayLike) -> jax.Array:
  _checks.check_in_range(lam, "lam", 0.0, 1.0)
  return _float(lam)


def _operands(lam: ArrayLike, n_a: ArrayLike,
              n_b: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The float (lam, n_a, n_b) of a rule, validated.

  The shapes must broadcast together (checked at trace time), lam lie in [0, 1] and the
  counts be positive (both checked when concrete).
  """
  _checks.broadcast_shapes(lam=lam, n_a=n_a, n_b=n_b)
  lam = _lam(lam)
  for name, n in (("n_a", n_a), ("n_b", n_b)):
    if _checks.is_concrete(n) and (np.asarray(n) <= 0).any():
      raise ValueError(f"{name} must be positive class counts, got {np.asarray(n)}.")
  return lam, _float(n_a), _float(n_b)


def vanilla(lam: ArrayLike, n_a: ArrayLike, n_b: ArrayLike) -> jax.Array:
  """Mixup (Zhang et al. 2018): lam_y = lam. The counts are ignored (only their shapes)."""
  shape = _checks.broadcast_shapes(lam=lam, n_a=n_a, n_b=n_b)
  return jnp.broadcast_to(_lam(lam), shape)


def remix(lam: ArrayLike, n_a: ArrayLike, n_b: ArrayLike, kappa: float = 3.0,
          tau: float = 0.5) -> jax.Array:
  """Remix (Chou et al. 2020; MAMix paper eq. 6).

    lam_y = 0    if n_a / n_b >= kappa and lam < tau      (a is majority, b dominates x)
    lam_y = 1    if n_a / n_b <= 1 / kappa and 1 - lam < tau
    lam_y = lam  otherwise

  Args:
    lam: input factor (weight of x_a) in [0, 1].
    n_a, n_b: class counts of the two sides.
    kappa: the "P-majority" ratio, >= 1 (paper: 3).
    tau: threshold in [0, 1] (paper: 0.5).
  """
  _checks.check_in_range(kappa, "kappa", 1.0, math.inf)
  _checks.check_in_range(tau, "tau", 0.0, 1.0)
  lam, n_a, n_b = _operands(lam, n_a, n_b)
  to_b = (n_a >= kappa * n_b) & (lam < tau)  # n_a / n_b >= kappa, without rounding
  to_a = (kappa * n_a <= n_b) & (1.0 - lam < tau)  # n_a / n_b <= 1 / kappa
  return jnp.where(to_b, 0.0, jnp.where(to_a, 1.0, lam))


def _mamix_crossover(n_a: jax.Array, n_b: jax.Array, omega: float) -> jax.Array:
  """m = eta_b / (eta_a + eta_b), eta_k = n_k^-omega (MAMix eq. 13), = 1 / (1 + (n_b/n_a)^omega)."""
  return 1.0 / (1.0 + (n_b / n_a) ** omega)


def mamix(lam: ArrayLike, n_a: ArrayLike, n_b: ArrayLike, omega: float = 0.25) -> jax.Array:
  """Margin-aware mixup, paper convention (Cheng et al., MAMix, eq. 13-16).

  With the input x = lam x_a + (1 - lam) x_b, eta_k = n_k^-omega and
  m = eta_b / (eta_a + eta_b):

    lam_y = 1 - 0.5 (1 - lam) / (eta_a / (eta_a + eta_b))   if lam >= m
    lam_y = 0.5 lam / m                                      if lam < m

  lam_y is continuous, increasing in lam, lam_y(m) = 0.5, lam_y(0) = 0, lam_y(1) = 1. When
  a is the majority (n_a > n_b), m > 1/2: the input must be mostly x_a before the label is
  half y_a, so the label favours the minority side.

  Args:
    lam: input factor (weight of x_a) in [0, 1].
    n_a, n_b: class counts (> 0) of the two sides.
    omega: margin exponent >= 0 (paper: 0.25, as in LDAM; 0 gives vanilla mixup).
  """
  _checks.check_positive(omega, "omega", allow_zero=True)
  lam, n_a, n_b = _operands(lam, n_a, n_b)
  m = _mamix_crossover(n_a, n_b, omega)
  upper = 1.0 - 0.5 * (1.0 - lam) / (1.0 - m)
  lower = 0.5 * lam / m
  return jnp.where(lam >= m, upper, lower)


def mamix_reference(lam: ArrayLike, n_a: ArrayLike, n_b: ArrayLike,
                    omega: float = 0.25) -> jax.Array:
  """MAMix in the reference-package convention (ImbalancedDL `mamix_data`/`get_lambda`).

  That package mixes the input as x = (1 - lam) x_a + lam x_b (lam weighs x_b), takes
  k_a = n_a^f, k_b = n_b^f with f = `mamix_ratio` = -omega = -0.25 (so k = eta), and
  mu = k_a / (k_a + k_b):

    lam_y = 1 - 0.5 lam / mu                 if lam < mu
    lam_y = 0.5 (1 - lam) / (1 - mu)         if lam > mu   (it raises at lam == mu;
                                                            here lam_y(mu) = 0.5)

  with the label y = lam_y y_a + (1 - lam_y) y_b. Mapping: the paper's input factor is
  lam_paper = 1 - lam and mu = 1 - m, so mamix_reference(lam) = mamix(1 - lam) exactly;
  since Beta(alpha, alpha) is symmetric, lam and 1 - lam have the same law and both
  conventions give the same distribution of (input, label) pairs. Use this rule with
  `mix_inputs(x_a, x_b, 1 - lam)`.

  Args:
    lam: the package's input factor (weight of x_b) in [0, 1].
    n_a, n_b: class counts (> 0) of the two sides.
    omega: margin exponent >= 0 (the package's `mamix_ratio` is -omega).
  """
  return mamix(1.0 - _lam(lam), n_a, n_b, omega)


def cpmix(lam: ArrayLike, n_a: ArrayLike, n_b: ArrayLike, t: float = 0.5) -> jax.Array:
  """CP-Mix label rule: lam_y = t lam + (1 - t) n_b / (n_a + n_b).

  The second term gives the rarer side the larger share of the label.

  Args:
    lam: input factor (weight of x_a) in [0, 1].
    n_a, n_b: class counts (> 0) of the two sides.
    t: trade-off in [0, 1] (paper: 0.5; t = 1 is vanilla mixup).
  """
  _checks.check_in_range(t, "t", 0.0, 1.0)
  lam, n_a, n_b = _operands(lam, n_a, n_b)
  return t * lam + (1.0 - t) * n_b / (n_a + n_b)


def bilateral(lam: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Bilateral mixup factors of DBN-Mix: (lam_c, lam_r) = (max(lam, 1-lam), min(lam, 1-lam)).

  One pair (x_u from the uniform sampler, x_r from the reverse sampler) gives two samples,
  lam_c x_u + (1 - lam_c) x_r for the conventional branch (dominated by the uniform draw)
  and lam_r x_u + (1 - lam_r) x_r for the re-balancing branch (dominated by the reverse
  draw); each label uses the same factor as its input.
  """
  lam = _lam(lam)
  return jnp.maximum(lam, 1.0 - lam), jnp.minimum(lam, 1.0 - lam)


RULES: dict[str, Rule] = {
    "vanilla": vanilla,
    "remix": remix,
    "mamix": mamix,
    "mamix_reference": mamix_reference,
    "cpmix": cpmix,
}


def get_rule(name: str, **hparams: float) -> Rule:
  """The rule called `name` with its hyperparameters bound: fn(lam, n_a, n_b) -> lam_y.

  Raises:
    ValueError: unknown rule, or a hyperparameter the rule does not take.
  """
  if name not in RULES:
    raise ValueError(f"Unknown label rule {name!r}; valid rules: {', '.join(RULES)}.")
  fn = RULES[name]
  valid = [p for p in inspect.signature(fn).parameters if p not in ("lam", "n_a", "n_b")]
  unknown = sorted(set(hparams) - set(valid))
  if unknown:
    raise ValueError(f"Label rule {name!r} takes hyperparameters {valid}, got {unknown}.")
  fn(0.5, 1.0, 1.0, **hparams)  # validates the values now, not at the first training step

  def rule(lam: ArrayLike, n_a: ArrayLike, n_b: ArrayLike) -> jax.Array:
    return fn(lam, n_a, n_b, **hparams)

  rule.__name__ = name
  rule.__doc__ = fn.__doc__
  return rule
