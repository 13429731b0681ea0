"""DBN-Mix and SBN-Mix: bilateral mixup of a uniform and a reverse-sampled batch (Baik et al.).

Each step draws a uniform (instance-balanced) batch (x_u, y_u) -- the step's clean batch --
and a reverse-sampled batch (x_v, y_v) from the whole training set with
P(k) ~ (n_max / n_k)^(1/gamma) (gamma = inf, i.e. class-balanced, in every published
setting), and one lam ~ Beta(alpha, alpha) per batch.

DBN-Mix (dual-branch model, eq. 8-14, 19):
    lam_c = max(lam, 1 - lam),  lam_r = min(lam, 1 - lam)
    x_c = lam_c x_u + (1 - lam_c) x_v  (conventional branch, dominated by the uniform draw)
    x_r = lam_r x_u + (1 - lam_r) x_v  (re-balancing branch, dominated by the reverse draw)
    labels likewise; the model runs once with `x_rebalance=x_r`;
    L = 0.5 L(z_c / T, y_c) + 0.5 L(z_r / T, y_r).
SBN-Mix (single branch, eq. 21-23): x = lam x_u + (1 - lam) x_v, y likewise, L(z / T, y).

Class temperatures (training only, eq. 15-16): T_k = (max_j B_j / B_k)^(1/eta) with
`temperature="paper"`: B_k = eps n_k / n_max + 1 - eps (default), `"code"` (authors'
repository): B_k = eps K n_k / n_max + 1 - eps, or `"none"` (T = 1). Loss `loss_form="ce"`
(paper, default) or `"binary"` (authors' code: -sum_k [t log p + (1-t) log(1-p)], clamped).
Inference: the mean of the two branches' logits, without temperature (eq. 20).

Defaults (CIFAR-10-LT, sec. 4.2): alpha = 1, gamma = inf, eta = 3, eps = 0.6 (CIFAR-100:
eta = 7; ImageNet-LT: eta = 9, eps = 0.2, alpha = 0.2; iNat: eta = 10, eps = 0.02). SBN-Mix
uses the same temperature by default (Table 4: bilateral mixup + temperature = 45.07 %).

Model passes (authors' code, soony1213/DBN-Mix main.py `train`):
- DBN-Mix `trunk="joint"` (default): one model call, the trunk on both mixed batches at
  once (`DualBranchNet`). `trunk="separate"` (code): `model(input, classifier_cb=True)`
  then `model(input_b, classifier_rb=True)`, i.e. trunk + branch c on x_c, then trunk +
  branch r on x_r, each batch normalised on its own and the trunk's running statistics
  updated twice in that order.
- SBN-Mix `clean_pass=False` (default): one call on the mixed batch. `clean_pass=True`
  (code): after the mixed pass the code computes its training accuracy with
  `model(input_ori)`, a train-mode pass of the clean uniform batch whose output is not in
  the loss, so the running statistics see the mixed batch, then the clean one. (DBN-Mix
  takes its accuracy from the two branches' outputs and has no such pass.)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ltjax import _checks, label_rules, losses, mixing, recipe, samplers
from ltjax.methods import ride as ride_lib
from ltjax.models import dual_branch

TEMPERATURES = ("paper", "code", "none")
LOSS_FORMS = losses.TEMPERATURE_LOSS_FORMS


def uniform_reverse_pair(ctx: recipe.StepContext, key: jax.Array, gamma: float
                         ) -> tuple[recipe.Batch, recipe.Batch]:
  """The clean (uniform) batch and a reverse-sampled batch of the same size."""
  key_u, key_v = jax.random.split(key)
  return (ctx.clean_batch(key_u),
          ctx.draw(key_v, samplers.Law("reverse", gamma=gamma)))


@dataclasses.dataclass(frozen=True)
class _Bilateral(recipe.Recipe):
  """Hyperparameters shared by DBN-Mix and SBN-Mix (see the module docstring)."""
  alpha: float = 1.0
  gamma: float = math.inf
  eta: float = 3.0
  eps: float = 0.6
  temperature: str = "paper"
  loss_form: str = "ce"
  per_sample_lambda: bool = False

  def __post_init__(self):
    _checks.check_positive(self.alpha, "alpha")
    _checks.check_positive(self.gamma, "gamma", allow_inf=True)
    _checks.check_positive(self.eta, "eta")
    _checks.check_in_range(self.eps, "eps", 0.0, 1.0)
    if self.temperature not in TEMPERATURES:
      raise ValueError(f"Unknown temperature {self.temperature!r}; valid: "
                       f"{', '.join(TEMPERATURES)}.")
    if self.loss_form not in LOSS_FORMS:
      raise ValueError(f"Unknown loss form {self.loss_form!r}; valid: "
                       f"{', '.join(LOSS_FORMS)}.")

  def requirements(self) -> recipe.Requirements:
    """The second batch of every pair is a reverse-sampled draw."""
    return dataclasses.replace(super().requirements(),
                               draws=(samplers.Law("reverse", gamma=self.gamma),))

  def temperatures(self, counts: jax.Array) -> jax.Array:
    """(K,) training temperatures T_k (ones with temperature="none")."""
    if self.temperature == "none":
      return jnp.ones(counts.shape, jnp.float32)
    return losses.dbn_temperatures(counts, self.eta, self.eps, self.temperature)

  def scaled_loss(self, logits: jax.Array, soft_labels: jax.Array,
                  counts: jax.Array) -> jax.Array:
    """L(z / T, y) in the chosen loss form."""
    return losses.temperature_scaled_loss(logits, soft_labels, self.temperatures(counts),
                                          self.loss_form)

  def lam(self, key: jax.Array, batch: int) -> jax.Array:
    """lam ~ Beta(alpha, alpha), one per batch (default) or per sample."""
    return mixing.sample_lambda(key, self.alpha, (batch,) if self.per_sample_lambda else ())


@dataclasses.dataclass(frozen=True)
class DBNMix(_Bilateral):
  """DBN-Mix: bilateral mixup into a dual-branch model with class temperatures.

  Attributes: see the module docstring (alpha=1, gamma=inf, eta=3, eps=0.6,
  temperature="paper", loss_form="ce"), and
    trunk: "joint" (one trunk pass on both batches, default) or "separate" (authors' code:
      one trunk pass per batch, conventional first); passed to the model as `trunk=`.
  Needs a dual-branch model (`branches=2`).
  """
  name: str = "dbn_mix"
  branches: int = 2
  trunk: str = "joint"

  def __post_init__(self):
    super().__post_init__()
    dual_branch.check_trunk(self.trunk)

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("pair", "lam")
    u, v = uniform_reverse_pair(ctx, keys["pair"], self.gamma)
    lam = self.lam(keys["lam"], u.labels.shape[0])
    lam_c, lam_r = label_rules.bilateral(lam)
    y_c = mixing.MixedLabels(u.labels, v.labels, lam_c).soft(ctx.num_classes)
    y_r = mixing.MixedLabels(u.labels, v.labels, lam_r).soft(ctx.num_classes)
    trunk = {} if self.trunk == "joint" else {"trunk": self.trunk}  # default call unchanged
    outputs, forward = forward(mixing.mix_inputs(u.x, v.x, lam_c),
                               x_rebalance=mixing.mix_inputs(u.x, v.x, lam_r), **trunk)
    loss = 0.5 * (self.scaled_loss(outputs["logits_c"], y_c, ctx.class_counts)
                  + self.scaled_loss(outputs["logits_r"], y_r, ctx.class_counts))
    draws = {"indices_u": u.indices, "indices_v": v.indices, "lam": lam}
    return loss, recipe.LossOutput(forward, method_state, {"lam_c": lam_c.mean()}, draws)

  def logits(self, outputs: recipe.Outputs) -> jax.Array:
    """Inference logits: (z_c + z_r) / 2, no temperature (DBN-Mix eq. 20)."""
    return 0.5 * (outputs["logits_c"] + outputs["logits_r"])


@dataclasses.dataclass(frozen=True)
class SBNMix(_Bilateral):
  """SBN-Mix: one lambda, x = lam x_u + (1 - lam) x_v, vanilla label, L(z / T, y).

  Attributes: as DBN-Mix (temperature="paper" by default; "none" for plain CE), and
    clean_pass: after the mixed pass, also run the clean uniform batch through the model
      in training mode, output unused (authors' code; see the module docstring).
    ride: RIDE's diversity-loss hyperparameters (`ltjax.methods.ride`): with a
      multi-expert model each expert gets L(z_e / T, y) plus the diversity term.
  """
  name: str = "sbn_mix"
  clean_pass: bool = False
  ride: ride_lib.RIDE = ride_lib.RIDE()

  def requirements(self) -> recipe.Requirements:
    """A reverse-sampled second batch; configured for RIDE, a multi-expert model."""
    return dataclasses.replace(super().requirements(),
                               **ride_lib.phase_requirements(self.ride, self.head))

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("pair", "lam")
    u, v = uniform_reverse_pair(ctx, keys["pair"], self.gamma)
    lam = self.lam(keys["lam"], u.labels.shape[0])
    soft = mixing.MixedLabels(u.labels, v.labels, lam).soft(ctx.num_classes)
    outputs, forward = forward(mixing.mix_inputs(u.x, v.x, lam))
    if self.clean_pass:
      _, forward = forward(u.x)
    loss = ride_lib.supervised_loss(
        outputs, lambda z: self.scaled_loss(z, soft, ctx.class_counts), self.ride,
        ctx.class_counts, ctx.epoch)
    draws = {"indices_u": u.indices, "indices_v": v.indices, "lam": lam}
    return loss, recipe.LossOutput(forward, method_state, {"lam": lam.mean()}, draws)
