"""Classification losses for long-tailed training with soft (mixup) labels.

Every loss takes logits `z` (B, K) and non-negative soft labels `y` (B, K) (one-hot,
mixed or smoothed) and returns a scalar, the (weighted) mean over the batch. Losses are
computed in at least float32, whatever the dtype of the logits. For one-hot labels each
loss equals its textbook (hard-label) form.

| function                | per-sample loss                                  | source          |
|-------------------------|--------------------------------------------------|-----------------|
| soft_cross_entropy      | -sum_k y_k log softmax(z)_k (optionally weighted)| mixup           |
| ldam_loss               | CE(s * (z - y * m), y), m_k ~ n_k^-1/4           | Cao et al. 2019 |
| balanced_softmax_loss   | CE(z + tau * log(n_k / N), y)                    | Ren et al. 2020 |
| focal_loss              | -sum_k y_k (1 - p_k)^gamma log p_k               | Lin et al. 2017 |
| temperature_scaled_loss | CE(softmax(z / T), y) or the code's binary form  | DBN-Mix         |

Class weights (`weights`, shape (K,)) are reduced in one of the two ways the reference codes
use (`reduction`, see `soft_cross_entropy`): "mean", the per-sample weighted loss averaged
over the batch (imbalanced-DL, MAMix Algorithm 1), or "normalized", divided by the summed
label weight (PyTorch's `F.cross_entropy(weight=w)`; LDAM-DRW, OTmix). DRW (deferred
re-weighting, Cao et al. 2019) supplies the weights through `deferred_weights`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ltjax import _checks

REDUCTIONS = ("mean", "normalized")
TEMPERATURE_FORMS = ("paper", "code")
TEMPERATURE_LOSS_FORMS = ("ce", "binary")


def _float(x: ArrayLike) -> jax.Array:
  """`x` as an array of at least float32 precision (float64 stays float64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _log(x: float | jax.Array) -> float | jax.Array:
  """log(x), in float64 on the host when x is concrete (log 0 = -inf)."""
  if not _checks.is_concrete(x):
    return jnp.log(x)
  with np.errstate(divide="ignore"):
    return float(np.log(np.float64(x)))


def _check_logits_labels(logits: ArrayLike, soft_labels: ArrayLike) -> int:
  """Validates a (B, K) logits / soft-label pair and returns K."""
  shape = jnp.shape(logits)
  if len(shape) != 2:
    raise ValueError(f"logits must have shape (B, K), got {shape}.")
  if jnp.shape(soft_labels) != shape:
    raise ValueError(f"logits and soft_labels must have the same shape (B, K), got "
                     f"{shape} and {jnp.shape(soft_labels)}.")
  _checks.check_in_range(soft_labels, "soft_labels", 0.0, float("inf"))
  return shape[1]


def _check_class_vector(x: ArrayLike, num_classes: int, name: str) -> None:
  """Validates a per-class (K,) vector of non-negative values."""
  _checks.check_shape(x, (num_classes,), name)
  _checks.check_in_range(x, name, 0.0, float("inf"))


def _check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"Unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}.")


def _reduce(terms: jax.Array, soft_labels: jax.Array, weights: ArrayLike | None,
            reduction: str = "mean", sample_weights: ArrayLike | None = None) -> jax.Array:
  """Batch reduction of per-class loss terms t_ik (B, K), optionally class-weighted.

  Numerator `S = sum_i s_i sum_k w_k t_ik` (w_k = 1 without class weights, s_i = 1 without
  sample weights); "mean" returns `S / B`, "normalized" returns `S / sum_i sum_k w_k y_ik`.
  Sample weights scale the numerator only, so `s = lam` (a scalar) gives `lam * L`.
  """
  _check_reduction(reduction)
  w = jnp.ones(terms.shape[-1], terms.dtype) if weights is None else _float(weights)
  per_sample = (terms * w).sum(axis=-1)
  if sample_weights is not None:
    per_sample = per_sample * _float(sample_weights)
  if reduction == "mean":
    return per_sample.mean()
  return per_sample.sum() / (soft_labels * w).sum()


def soft_cross_entropy(logits: ArrayLike, soft_labels: ArrayLike,
                       weights: ArrayLike | None = None, reduction: str = "mean",
                       sample_weights: ArrayLike | None = None) -> jax.Array:
  """Cross-entropy with soft labels, optionally class-weighted.

  Per-class terms `t_ik = -w_k y_ik log softmax(z_i)_k` (w_k = 1 without `weights`), reduced
  over the batch in one of two ways, which differ only with class weights:

  - reduction="mean": `L = (1/B) sum_i s_i sum_k t_ik`. With mixup labels
    `y = lam e_a + (1 - lam) e_b` this is the imbalanced-DL reference
    (`CrossEntropyLoss(weight=w, reduction="none")` per side, mixed, then `.mean()`) and
    MAMix's Algorithm 1: `(1/B) sum_i (lam w_a CE_a + (1 - lam) w_b CE_b)`.
  - reduction="normalized": `L = sum_i s_i sum_k t_ik / sum_i sum_k w_k y_ik`. For one-hot
    labels this is PyTorch's `F.cross_entropy(z, y, weight=w)` =
    `sum_i w_{y_i} CE_i / sum_i w_{y_i}` (LDAM-DRW's DRW loss).

  `sample_weights` s_i (default 1) scale the numerator only: `s = lam` with one-hot labels
  gives one side of the reference codes' `lam * CE(z, y_a) + (1 - lam) * CE(z, y_b)`.

  Args:
    logits: (B, K) logits.
    soft_labels: (B, K) soft labels.
    weights: optional (K,) non-negative class weights (e.g. from `deferred_weights`).
    reduction: "mean" or "normalized" (see above).
    sample_weights: optional scalar or (B,) weights of the numerator.

  Returns:
    Scalar loss.

  Raises:
    ValueError: logits and labels of different shapes, negative labels, weights of the
      wrong shape or negative, unknown reduction.
  """
  num_classes = _check_logits_labels(logits, soft_labels)
  if weights is not None:
    _check_class_vector(weights, num_classes, "weights")
  y = _float(soft_labels)
  log_p = jax.nn.log_softmax(_float(logits), axis=-1)
  return _reduce(-y * log_p, y, weights, reduction, sample_weights)


def drw_weights(counts: ArrayLike, beta: float = 0.9999) -> jax.Array:
  """Class-balanced weights from the effective number of samples (Cui et al. 2019).

  `w_k = (1 - beta) / (1 - beta^n_k)`, rescaled so that `sum_k w_k = K` (the weights of
  LDAM-DRW, Cao et al. 2019, and of the DRW stage of MAMix / OTmix). beta = 0 gives ones;
  beta -> 1 tends to inverse frequency. The factor 1 - beta cancels in the rescaling;
  `1 - beta^n` is computed as `-expm1(n log beta)` with log beta in float64 on the host.

  Args:
    counts: (K,) training images per class, all >= 1.
    beta: in [0, 1).

  Raises:
    ValueError: counts not 1-D, negative or with an empty class; beta outside [0, 1).
  """
  _checks.check_counts(counts)
  if _checks.is_concrete(beta) and not 0.0 <= float(beta) < 1.0:
    raise ValueError(f"beta must lie in [0, 1), got {beta}.")
  n = _float(counts)
  inverse_effective = 1.0 / -jnp.expm1(n * _log(beta))
  return inverse_effective * (n.shape[0] / inverse_effective.sum())


def deferred_weights(counts: ArrayLike, epoch: ArrayLike, drw_epoch: ArrayLike,
                     beta: float = 0.9999) -> jax.Array:
  """DRW schedule: ones before `drw_epoch`, `drw_weights(counts, beta)` from it on.

  `epoch` (and `drw_epoch`) may be traced, so one compiled step serves both phases.
  """
  drw = drw_weights(counts, beta)
  return jnp.where(jnp.asarray(epoch) >= jnp.asarray(drw_epoch), drw, jnp.ones_like(drw))


def ldam_margins(counts: ArrayLike, max_margin: float = 0.5) -> jax.Array:
  """LDAM margins (Cao et al. 2019): `m_k = C / n_k^(1/4)` with max_k m_k = max_margin.

  Raises:
    ValueError: bad counts (empty class included), max_margin <= 0.
  """
  _checks.check_counts(counts)
  _checks.check_positive(max_margin, "max_margin")
  m = _float(counts) ** -0.25
  return m * (max_margin / m.max())


def ldam_loss(logits: ArrayLike, soft_labels: ArrayLike, margins: ArrayLike,
              scale: float = 30.0, weights: ArrayLike | None = None,
              reduction: str = "normalized",
              sample_weights: ArrayLike | None = None) -> jax.Array:
  """LDAM loss (Cao et al. 2019): `L = CE_w(s * (z - y * m), y)`.

  The logits `z` come from a normalised linear head (cosines); each logit z_ik loses
  `y_ik m_k` and the result is scaled by `s`. For a one-hot label this subtracts the
  target's margin m_y from the target logit only, which is LDAM exactly (the reference's
  `LDAMLoss`, whose class weights reduce as `F.cross_entropy(weight=w)`, hence the
  default reduction "normalized"). Mixed labels: the references apply LDAM to each side
  with its full margin, `lam * LDAM(z, y_a) + (1 - lam) * LDAM(z, y_b)`: call this with
  one-hot labels per side and `sample_weights=lam` (`ltjax.methods.Criterion` does). With a
  soft label the margin is split (class a loses `lam m_a`), which is not the reference.

  Args:
    logits: (B, K) cosine logits.
    soft_labels: (B, K) soft labels (one-hot for the reference loss).
    margins: (K,) margins, e.g. `ldam_margins(counts)`.
    scale: s > 0 (30 in LDAM).
    weights: optional (K,) class weights.
    reduction, sample_weights: as in `soft_cross_entropy`.

  Raises:
    ValueError: shape mismatches, negative margins or weights, scale <= 0.
  """
  num_classes = _check_logits_labels(logits, soft_labels)
  _check_class_vector(margins, num_classes, "margins")
  _checks.check_positive(scale, "scale")
  y = _float(soft_labels)
  adjusted = scale * (_float(logits) - y * _float(margins))
  return soft_cross_entropy(adjusted, y, weights, reduction, sample_weights)


def log_prior(counts: ArrayLike) -> jax.Array:
  """Log class prior `log(n_k / N)` of the training set.

  Raises:
    ValueError: bad counts (an empty class has log prior -inf).
  """
  _checks.check_counts(counts)
  n = _float(counts)
  return jnp.log(n) - jnp.log(n.sum())


def balanced_softmax_loss(logits: ArrayLike, soft_labels: ArrayLike, counts: ArrayLike,
                          weights: ArrayLike | None = None, tau: float = 1.0,
                          reduction: str = "mean",
                          sample_weights: ArrayLike | None = None) -> jax.Array:
  """Balanced softmax (Ren et al. 2020) / logit-adjusted loss (Menon et al. 2021).

  `L = CE_w(z + tau * log(n_k / N), y)`. tau = 1 is balanced softmax (BALMS, the L_BS of
  CP-Mix); other tau give the logit-adjustment loss. Training loss only: predict with the
  raw logits `z`. Uniform counts give plain cross-entropy.

  Args:
    logits: (B, K) logits.
    soft_labels: (B, K) soft labels.
    counts: (K,) training images per class, all >= 1.
    weights: optional (K,) class weights, as in `soft_cross_entropy`.
    tau: adjustment strength, >= 0.
    reduction, sample_weights: as in `soft_cross_entropy`.

  Raises:
    ValueError: shape mismatches, bad counts, tau < 0.
  """
  num_classes = _check_logits_labels(logits, soft_labels)
  _checks.check_shape(counts, (num_classes,), "counts")
  _checks.check_positive(tau, "tau", allow_zero=True)
  return soft_cross_entropy(_float(logits) + tau * log_prior(counts), soft_labels, weights,
                            reduction, sample_weights)


def focal_loss(logits: ArrayLike, soft_labels: ArrayLike, gamma: float = 1.0) -> jax.Array:
  """Focal loss (Lin et al. 2017), soft labels: `l_i = -sum_k y_ik (1 - p_ik)^gamma log p_ik`.

  For one-hot labels this is `-(1 - p_t)^gamma log p_t`; gamma = 0 is cross-entropy.
  `1 - p` is computed as `-expm1(log p)` and floored at the smallest normal float so the
  gradient stays finite for gamma < 1.

  Raises:
    ValueError: shape mismatch, gamma < 0.
  """
  _check_logits_labels(logits, soft_labels)
  _checks.check_positive(gamma, "gamma", allow_zero=True)
  y = _float(soft_labels)
  log_p = jax.nn.log_softmax(_float(logits), axis=-1)
  one_minus_p = jnp.maximum(-jnp.expm1(log_p), jnp.finfo(log_p.dtype).tiny)
  return _reduce(-y * one_minus_p ** gamma * log_p, y, None)


def dbn_temperatures(counts: ArrayLike, eta: float, eps: float,
                     form: str = "paper") -> jax.Array:
  """Class-conditional temperatures of DBN-Mix (Baik et al., eq. 15-16).

  `T_k = (max_j B_j / B_k)^(1/eta)` with
    - form="paper" (eq. 15): `B_k = eps * n_k / n_max + (1 - eps)`;
    - form="code" (the authors' repository): `B_k = eps * K * n_k / n_max + (1 - eps)`.
  The head class gets T = 1, rarer classes larger T. On CIFAR-10-LT rho=100 with eta=3,
  eps=0.6 the tail temperature is 1.350 (paper) and 2.405 (code).

  Args:
    counts: (K,) training images per class, all >= 1.
    eta: > 0 (CIFAR-10: 3, CIFAR-100: 7, ImageNet-LT: 9, iNat: 10).
    eps: in [0, 1] (CIFAR: 0.6, ImageNet-LT: 0.2, iNat: 0.02).
    form: "paper" or "code".

  Raises:
    ValueError: bad counts, eta <= 0, eps outside [0, 1], unknown form.
  """
  _checks.check_counts(counts)
  _checks.check_positive(eta, "eta")
  _checks.check_in_range(eps, "eps", 0.0, 1.0)
  if form not in TEMPERATURE_FORMS:
    raise ValueError(f"Unknown temperature form {form!r}; valid: "
                     f"{', '.join(TEMPERATURE_FORMS)}.")
  n = _float(counts)
  slope = eps * n.shape[0] if form == "code" else eps
  b = slope * n / n.max() + (1.0 - eps)
  return (b.max() / b) ** (1.0 / eta)


def temperature_scaled_loss(logits: ArrayLike, soft_labels: ArrayLike,
                            temperatures: ArrayLike, form: str = "ce", *,
                            clamp: float = 1e-7) -> jax.Array:
  """DBN-Mix training loss on temperature-scaled probabilities `p = softmax(z / T)`.

    - form="ce" (paper, eq. 17-19): `l_i = -sum_k y_ik log p_ik`.
    - form="binary" (authors' code): `l_i = -sum_k [y_ik log p_ik + (1 - y_ik) log(1 - p_ik)]`
      on the softmax probabilities clamped to [clamp, 1 - clamp] (no gradient where the
      clamp is active, as with `torch.clamp`). `1 - p` is computed as `-expm1(log p)` and
      clamped to the same interval, so a saturated p costs exactly `-log(clamp)` instead
      of the float32 rounding of `1 - clamp` (0.99999988 for clamp = 1e-7).
  Both are averaged over the batch. Training only: DBN-Mix predicts with the raw logits.

  Args:
    logits: (B, K) logits.
    soft_labels: (B, K) soft labels.
    temperatures: (K,) positive temperatures, e.g. `dbn_temperatures(...)`.
    form: "ce" or "binary".
    clamp: probability clamp of the binary form, in (0, 0.5).

  Raises:
    ValueError: shape mismatches, non-positive temperatures, unknown form, bad clamp.
  """
  num_classes = _check_logits_labels(logits, soft_labels)
  _checks.check_shape(temperatures, (num_classes,), "temperatures")
  if _checks.is_concrete(temperatures) and not (np.asarray(temperatures) > 0).all():
    raise ValueError(f"temperatures must all be > 0, got "
                     f"{np.asarray(temperatures).tolist()}.")
  if form not in TEMPERATURE_LOSS_FORMS:
    raise ValueError(f"Unknown temperature loss form {form!r}; valid: "
                     f"{', '.join(TEMPERATURE_LOSS_FORMS)}.")
  _checks.check_positive(clamp, "clamp")
  if clamp >= 0.5:
    raise ValueError(f"clamp must be < 0.5, got {clamp}.")
  scaled = _float(logits) / _float(temperatures)
  if form == "ce":
    return soft_cross_entropy(scaled, soft_labels)
  y = _float(soft_labels)
  log_p = jax.nn.log_softmax(scaled, axis=-1)
  log_p_clamped = jnp.log(jnp.clip(jnp.exp(log_p), clamp, 1.0 - clamp))
  log_q_clamped = jnp.log(jnp.clip(-jnp.expm1(log_p), clamp, 1.0 - clamp))
  return _reduce(-(y * log_p_clamped + (1.0 - y) * log_q_clamped), y, None)
