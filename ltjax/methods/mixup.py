"""The mixup family: in-batch pairs, a label rule, a criterion.

    lam ~ Beta(alpha, alpha),  x = lam x_i + (1 - lam) x_p(i),
    y = lam_y y_i + (1 - lam_y) y_p(i),  lam_y = rule(lam, n_{y_i}, n_{y_p(i)})

| registry name        | pairing p(i)                  | label rule | criterion | source |
|----------------------|-------------------------------|------------|-----------|--------|
| "mixup" / "_drw"     | random permutation            | vanilla    | CE (+DRW) | Zhang et al. 2018; MAMix paper (DRW) |
| "remix" / "_drw"     | random permutation            | Remix      | CE (+DRW) | Chou et al. 2020 (kappa=3, tau=0.5) |
| "mamix" / "_drw"     | random permutation            | MAMix      | CE (+DRW) | MAMix paper (omega=0.25) |
| "smote_mix"          | same-class nearest neighbour  | vanilla    | CE        | SPEC 3 (label stays hard) |
| "neighbor_mix"       | any-class nearest neighbour   | vanilla    | CE        | SPEC 3 |

alpha = 1 (CIFAR setting of the MAMix / Remix / mixup-DRW recipes). DRW starts at epoch
160 of 200 (ImbalancedDL / MAMix recipe), rescaled by the registry. One lambda per batch
(reference code) by default; `per_sample_lambda=True` draws one per sample. Nearest
neighbours are searched inside the clean batch, in the feature space of the model in
inference mode (no gradient, running BN statistics) by default, or in pixel space
(`pairing_space="pixels"`). A same-class partner has the same label, so SMOTE-Mix's label
is the hard label whatever the rule.

Sound (LOBM sec. 4.3, ESC-50-LT: "mixup is replaced by between-class (BC) learning"):
`input_mix="bc"` mixes the inputs by BC learning's rule (Tokozume et al. 2018,
`ltjax.audio.bc_mix`): x = (p x_a + (1 - p) x_b) / sqrt(p^2 + (1 - p)^2), p from lam and
the two waveforms' A-weighted gains at `sample_rate`; the label keeps lam (the rule's lam_y
of lam). BC draws r ~ U(0, 1) per example: alpha = 1 with `per_sample_lambda=True`. The
reference redraws a pair until its labels differ; here a pair keeps its draw (same-label
pairs are allowed: their mix is a louder / quieter example of one class, its label that
class), so that the pairing law stays the method's own (e.g. LOBM's two independent
class-balanced draws); with K = 50 such pairs are 2 % of LOBM's.

MAMix uses the paper convention (x = lam x_a + (1 - lam) x_b, `label_rules.mamix`); the
reference package's convention (`label_rules.mamix_reference`) gives the same distribution
of (input, label) pairs, so it is not a separate recipe option.

`clean_pass=True` follows the imbalanced-DL trainers (ntucllab/imbalanced-DL,
imbalanceddl/strategy/_mixup_drw.py, _remix_drw.py, _mamix_drw.py `train_one_epoch`):
`output_prec, _ = self.model(_input)` runs the clean batch through the model in training
mode *before* the mixed pass; its output only feeds the logged training accuracy, the loss
is on the mixed output. The pass updates the BatchNorm running statistics (clean, then
mixed batch), not the gradient. Default False (one pass, as in the papers).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax

from ltjax import _checks, audio, label_rules, mixing, pairing, recipe
from ltjax.methods import common

PAIRINGS = ("random", "smote", "neighbor")
PAIRING_SPACES = ("features", "pixels")
LABEL_RULES = {"vanilla": (), "remix": ("kappa", "tau"), "mamix": ("omega",)}
INPUT_MIXES = ("linear", "bc")  # lam x_a + (1 - lam) x_b; between-class learning (sound)


class MixedBatch(NamedTuple):
  """A mixed batch: inputs, labels (the two sides and lam_y) and the input factor lam."""
  x: jax.Array
  labels: mixing.MixedLabels
  lam: jax.Array


def mix_batch(key: jax.Array, x_a: jax.Array, labels_a: jax.Array, x_b: jax.Array,
              labels_b: jax.Array, counts: jax.Array, *, alpha: float,
              rule: label_rules.Rule, per_sample: bool = False, input_mix: str = "linear",
              sample_rate: int = 16000) -> MixedBatch:
  """Mixes two aligned batches: x = lam x_a + (1 - lam) x_b, y = lam_y y_a + (1 - lam_y) y_b.

  With input_mix="bc" the inputs (waveforms) are mixed by `ltjax.audio.bc_mix(x_a, x_b,
  lam, sample_rate)` instead; the labels are the same.

  Args:
    key: PRNG key for lambda.
    x_a, x_b: (B, ...) inputs.
    labels_a, labels_b: (B,) integer labels.
    counts: (K,) training class counts n_k (for count-aware rules).
    alpha: Beta(alpha, alpha) parameter.
    rule: `lam_y = rule(lam, n_a, n_b)` from `ltjax.label_rules`.
    per_sample: one lambda per sample instead of one per batch.
    input_mix: "linear" (mixup) or "bc" (between-class learning on (B, L) waveforms).
    sample_rate: the waveforms' rate for "bc" (16000 or 44100; sets the gain's frames).

  Returns:
    MixedBatch(x, MixedLabels(labels_a, labels_b, lam_y (B,)), lam (() or (B,))).
  """
  lam = mixing.sample_lambda(key, alpha, (labels_a.shape[0],) if per_sample else ())
  lam_y = rule(lam, counts[labels_a], counts[labels_b])
  if input_mix == "bc":
    x = audio.bc_mix(x_a, x_b, lam, sample_rate)
  elif input_mix == "linear":
    x = mixing.mix_inputs(x_a, x_b, lam)
  else:
    raise ValueError(f"Unknown input_mix {input_mix!r}; valid: {', '.join(INPUT_MIXES)}.")
  return MixedBatch(x, mixing.MixedLabels(labels_a, labels_b, lam_y), lam)


def check_input_mix(input_mix: str, sample_rate: int) -> None:
  """Raises ValueError for an unknown input mix, or BC at a rate without a gain frame."""
  if input_mix not in INPUT_MIXES:
    raise ValueError(f"Unknown input_mix {input_mix!r}; valid: {', '.join(INPUT_MIXES)}.")
  if input_mix == "bc" and sample_rate not in audio.N_FFT:
    raise ValueError(f"input_mix='bc' needs sample_rate in {sorted(audio.N_FFT)} (the BC "
                     f"gain's frame lengths), got {sample_rate}.")


@dataclasses.dataclass(frozen=True)
class Mixup(common.SupervisedRecipe):
  """Mixup with a label rule and a pairing, on the clean batch (see the module table).

  Attributes:
    alpha: Beta(alpha, alpha) of lambda (1.0, CIFAR recipes of mixup / Remix / MAMix).
    label_rule: "vanilla" | "remix" | "mamix".
    kappa, tau: Remix hyperparameters (3.0, 0.5; Chou et al. 2020).
    omega: MAMix exponent (0.25; MAMix paper).
    pairing: "random" | "smote" (same-class nearest neighbour) | "neighbor" (any class).
    pairing_space: "features" (model features, inference mode, stop-gradient) | "pixels".
    per_sample_lambda: one lambda per sample (default: one per batch, reference code).
    clean_pass: also run the clean batch through the model in training mode before the
      mixed pass, output unused (imbalanced-DL code; see the module docstring).
    input_mix: "linear" (mixup) or "bc" (between-class learning, sound; module docstring).
    sample_rate: the waveforms' sampling rate for input_mix="bc" (16000 EnvNet, 44100
      EnvNet-v2).
    criterion: supervised loss (default cross-entropy; "_drw" names add DRW).
  """
  name: str = "mixup"
  alpha: float = 1.0
  label_rule: str = "vanilla"
  kappa: float = 3.0
  tau: float = 0.5
  omega: float = 0.25
  pairing: str = "random"
  pairing_space: str = "features"
  per_sample_lambda: bool = False
  clean_pass: bool = False
  input_mix: str = "linear"
  sample_rate: int = 16000

  def __post_init__(self):
    super().__post_init__()
    _checks.check_positive(self.alpha, "alpha")
    check_input_mix(self.input_mix, self.sample_rate)
    if self.label_rule not in LABEL_RULES:
      raise ValueError(f"Unknown label rule {self.label_rule!r} for mixup; valid: "
                       f"{', '.join(LABEL_RULES)}.")
    if self.pairing not in PAIRINGS:
      raise ValueError(f"Unknown pairing {self.pairing!r}; valid: {', '.join(PAIRINGS)}.")
    if self.pairing_space not in PAIRING_SPACES:
      raise ValueError(f"Unknown pairing space {self.pairing_space!r}; valid: "
                       f"{', '.join(PAIRING_SPACES)}.")
    self.rule()  # validates the rule's hyperparameters now

  def requirements(self) -> recipe.Requirements:
    """Pairs chosen in the model's feature space need its "features"."""
    return dataclasses.replace(
        super().requirements(),
        needs_features=self.pairing != "random" and self.pairing_space == "features")

  def rule(self) -> label_rules.Rule:
    """The label rule with its hyperparameters bound."""
    params = {p: getattr(self, p) for p in LABEL_RULES[self.label_rule]}
    return label_rules.get_rule(self.label_rule, **params)

  def partners(self, key: jax.Array, forward: recipe.Forward, x: jax.Array,
               labels: jax.Array) -> jax.Array:
    """(B,) partner index of each sample of the clean batch."""
    if self.pairing == "random":
      return pairing.random_pairs(key, labels.shape[0])
    if self.pairing_space == "features":
      points = common.inference_outputs(forward, x)["features"]
    else:
      points = x.reshape(x.shape[0], -1)
    return pairing.nearest_neighbours(points, labels, same_class=self.pairing == "smote")

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("clean", "pair", "lam")
    x, labels, indices = ctx.clean_batch(keys["clean"])
    partner = self.partners(keys["pair"], forward, x, labels)
    mixed = mix_batch(keys["lam"], x, labels, common.take(x, partner),
                      common.take(labels, partner), ctx.class_counts, alpha=self.alpha,
                      rule=self.rule(), per_sample=self.per_sample_lambda,
                      input_mix=self.input_mix, sample_rate=self.sample_rate)
    if self.clean_pass:
      _, forward = forward(x)
    loss, _, forward = self.supervised(forward, mixed.x, mixed.labels, ctx)
    draws = {"indices": indices, "partner": partner, "lam": mixed.lam,
             "lam_y": mixed.labels.lam}
    return loss, recipe.LossOutput(forward, method_state, {"lam": mixed.lam.mean()}, draws)
