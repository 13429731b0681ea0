"""RIDE's distribution-aware diversity loss (Wang et al. 2021, ICLR), for any recipe's criterion.

A multi-expert model (`ltjax.models.ride`) outputs each expert's logits z_e (E, B, K) and
their mean z_bar = (1/E) sum_e z_e. RIDE trains every expert with the recipe's own loss plus
a diversity term (frank-xwang/RIDE-LongTailRecognition, model/loss.py, `RIDELoss.forward`):

    L = sum_e [ c_base L_crit(z_e, y) + c_div T_bar^2 KL(p_bar || q_e) ]
    p_bar = softmax(s z_bar / T)  (no gradient),   q_e = softmax(s z_e / T)

- L_crit: the recipe's criterion on expert e's logits (RIDE's CIFAR config: LDAM with DRW
  from epoch 160; CE, DRW, balanced softmax or any mixed label work the same way);
- KL(p || q) = (1/B) sum_i sum_k p_ik (log p_ik - log q_ik) (`F.kl_div(log q, p,
  reduction="batchmean")`); s is the logit scale the criterion applies (LDAM's s = 30 on a
  cosine head, else 1): the reference computes the KL on its network's `s * cos` outputs;
- T: before `diversity_epoch` the scalar T0 (`base_diversity_temperature` = 1); from it on
  the class temperatures T_k = T0 w_k / max_j w_j, w_k = K rf n_k / N + 1 - rf
  (`reweight_factor` rf = 0.05): head classes get a higher temperature. T_bar is the mean of
  T over the K classes (T0 before the switch);
- c_div = `additional_diversity_factor` = -0.2 in the CIFAR config (a negative factor
  *rewards* the KL: the experts are pushed apart), c_base = `base_loss_factor` = 1.

The reference switches the class temperatures and the DRW weights together, in
`_hook_before_epoch(epoch)` with `epoch > reweight_epoch` on the trainer's 1-based epoch
(base/base_trainer.py: `range(start_epoch=1, epochs + 1)`): from 0-based epoch 160, which
is `diversity_epoch = drw_epoch = 160` here (the registry sets both).

Paper vs code (ltjax follows the code, the only place where the loss is fully stated; the
paper's sec. 3 gives the same terms): the paper writes the diversity loss with a positive
weight lambda subtracted from the classification loss, the code adds
`additional_diversity_factor * ...` with a factor of -0.2, the same thing. Two code
details ltjax does not copy: with `additional_diversity_factor == 0` the code trains every
expert on the *mean* logits (`ride_loss_logits = output_logits`), and without reweighting
(`reweight_epoch = -1`) `per_cls_weights_diversity` is never set and the code fails; ltjax
trains each expert on its own logits and keeps T = T0 when `diversity_epoch` is None.

Routing stage (RIDE sec. 3.3, "expert assignment"; `RIDERouting`): after the experts, a
phase trains only the routers of a model built with `routers=True` (`ltjax.models.ride`)
on class-balanced batches, with everything else frozen and BatchNorm in inference mode
(ea_resnet_cifar.py's `requires_grad_(False)` and `_hook_before_iter`). With c_j the
correctness of the mean of experts 0..j, router j's target is "expert j + 1 or a later one
helps":

    y_j = (not c_j) and (c_(j+1) or ... or c_(E-1)),
    L = 1/(E-1) sum_j BCE_pos(r_j, y_j),  BCE_pos(r, y) = -(p y log s(r) + (1-y) log(1-s(r)))

averaged over the batch (`F.binary_cross_entropy_with_logits(pos_weight=p)`), p =
`route_pos_weight`. At test time the phase predicts with "routed_logits". The reference
config (config_imbalance_cifar100_ride_ea.json): 5 epochs, batch 512, SGD lr 0.01 with
`CosineAnnealingLR(T_max=5)` per epoch, Nesterov momentum 0.9, wd 5e-4, p = 100, k = 30.
Its `BalancedSampler` picks a class uniformly, then the next image of that class's
shuffled list; ltjax's class-balanced law picks the image uniformly in the class.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ltjax import _checks, recipe, samplers

Outputs = recipe.Outputs
EXPERT_KEY = "expert_logits"
ROUTER_KEY = "router_logits"


@dataclasses.dataclass(frozen=True)
class RIDE(recipe.Hyperparameters):
  """RIDE's diversity-loss hyperparameters (model/loss.py `RIDELoss` and the CIFAR config).

  Attributes:
    multi_expert: the recipe is configured for RIDE and needs a multi-expert model (one
      that outputs "expert_logits"; `Requirements.experts`). The RIDE loss applies whenever
      the model outputs "expert_logits"; this flag only makes the model check strict.
    diversity_factor: c_div, `additional_diversity_factor` (-0.2, RIDE CIFAR config).
    diversity_temperature: T0, `base_diversity_temperature` (1.0).
    diversity_reweight: rf, `reweight_factor` of the class temperatures (0.05), in [0, 1].
    base_loss_factor: c_base, the weight of each expert's criterion loss (1.0).
    diversity_epoch: first epoch (0-based) with class temperatures; None: T0 throughout.
    route_pos_weight: p, the positive-class weight of the routing stage's loss (100: the
      CIFAR-100 EA config; the EA networks' default is 20).
  """
  multi_expert: bool = False
  diversity_factor: float = -0.2
  diversity_temperature: float = 1.0
  diversity_reweight: float = 0.05
  base_loss_factor: float = 1.0
  diversity_epoch: int | None = None
  route_pos_weight: float = 100.0

  def __post_init__(self):
    _checks.check_positive(self.diversity_temperature, "diversity_temperature")
    _checks.check_positive(self.route_pos_weight, "route_pos_weight")
    _checks.check_in_range(self.diversity_reweight, "diversity_reweight", 0.0, 1.0)
    _checks.check_positive(self.base_loss_factor, "base_loss_factor", allow_zero=True)
    if self.diversity_epoch is not None and (
        int(self.diversity_epoch) != self.diversity_epoch or self.diversity_epoch < 0):
      raise ValueError(f"diversity_epoch must be a non-negative integer, got "
                       f"{self.diversity_epoch}.")


FIELDS = tuple(f.name for f in dataclasses.fields(RIDE))


def class_temperatures(counts: ArrayLike, base_temperature: ArrayLike,
                       reweight_factor: ArrayLike) -> jax.Array:
  """(K,) T_k = T0 w_k / max_j w_j with w_k = K rf n_k / N + 1 - rf (RIDELoss.__init__)."""
  counts = jnp.asarray(counts, jnp.float32)
  num_classes = counts.shape[0]
  w = num_classes * reweight_factor * counts / jnp.sum(counts) + 1.0 - reweight_factor
  return base_temperature * w / jnp.max(w)


def temperatures(hp: RIDE, counts: ArrayLike, epoch: ArrayLike) -> jax.Array:
  """(K,) diversity temperatures at `epoch`: T0 before `diversity_epoch`, T_k from it on."""
  counts = jnp.asarray(counts, jnp.float32)
  flat = jnp.full(counts.shape, hp.diversity_temperature, jnp.float32)
  if hp.diversity_epoch is None:
    return flat
  per_class = class_temperatures(counts, hp.diversity_temperature, hp.diversity_reweight)
  return jnp.where(jnp.asarray(epoch) >= hp.diversity_epoch, per_class, flat)


def diversity_kl(mean_logits: ArrayLike, logits: ArrayLike, temperature: ArrayLike
                 ) -> jax.Array:
  """KL(p_bar || q) summed over classes, averaged over the batch ('batchmean').

  p_bar = softmax(mean_logits / T) under stop_gradient, q = softmax(logits / T); T is a
  scalar or a (K,) vector of class temperatures.
  """
  target = jax.lax.stop_gradient(jax.nn.softmax(mean_logits / temperature, axis=-1))
  log_q = jax.nn.log_softmax(logits / temperature, axis=-1)
  log_p = jnp.log(jnp.where(target > 0, target, 1.0))
  return jnp.sum(target * (log_p - log_q)) / jnp.shape(logits)[0]


def ride_loss(expert_logits: ArrayLike, base_loss: Callable[[jax.Array], jax.Array],
              hp: RIDE, counts: ArrayLike, epoch: ArrayLike, logit_scale: ArrayLike = 1.0
              ) -> jax.Array:
  """sum_e [c_base base_loss(z_e) + c_div T_bar^2 KL(softmax(s z_bar / T) || softmax(s z_e / T))].

  Args:
    expert_logits: (E, B, K) the experts' logits (cosines with a normalised head).
    base_loss: the recipe's loss of one expert's (B, K) logits, e.g. its criterion on the
      batch's (mixed) labels.
    hp: the RIDE hyperparameters.
    counts: (K,) training images per class.
    epoch: current epoch (0-based, traced or concrete).
    logit_scale: s, the scale the criterion applies to the logits (LDAM: `Criterion.scale`).

  Returns:
    Scalar loss (model/loss.py `RIDELoss.forward`; see the module docstring).
  """
  expert_logits = jnp.asarray(expert_logits)
  _checks.check_shape(expert_logits, (None, None, None), "expert_logits")
  temp = temperatures(hp, counts, epoch)
  t_bar = jnp.mean(temp)
  scaled = logit_scale * expert_logits
  mean = jnp.mean(scaled, axis=0)
  per_expert = lambda z, zs: (hp.base_loss_factor * base_loss(z)
                              + hp.diversity_factor * t_bar ** 2 * diversity_kl(mean, zs, temp))
  return sum(per_expert(expert_logits[e], scaled[e]) for e in range(expert_logits.shape[0]))


def supervised_loss(outputs: Outputs, base_loss: Callable[[jax.Array], jax.Array], hp: RIDE,
                    counts: ArrayLike, epoch: ArrayLike, logit_scale: ArrayLike = 1.0
                    ) -> jax.Array:
  """The loss of a model's outputs: `ride_loss` on "expert_logits" when the model has experts,
  else `base_loss(outputs["logits"])`."""
  if EXPERT_KEY not in outputs:
    return base_loss(outputs["logits"])
  return ride_loss(outputs[EXPERT_KEY], base_loss, hp, counts, epoch, logit_scale)


def routing_targets(expert_logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """(E - 1, B) bool y_j: the first j + 1 experts' mean is wrong and a later prefix is right.

  c_j = [argmax_k sum_(e <= j) z_e = y] (the mean's argmax; any positive scale alike).
  """
  expert_logits = jnp.asarray(expert_logits)
  correct = jnp.argmax(jnp.cumsum(expert_logits, axis=0), axis=-1) == jnp.asarray(labels)
  later = jnp.flip(jnp.cumsum(jnp.flip(correct[1:], 0), axis=0), 0) > 0  # any c_(j+1..)
  return ~correct[:-1] & later


def binary_cross_entropy_with_logits(logits: ArrayLike, targets: ArrayLike,
                                     pos_weight: ArrayLike = 1.0) -> jax.Array:
  """Mean of -(p y log sigmoid(r) + (1 - y) log(1 - sigmoid(r))) over all entries."""
  logits, targets = jnp.asarray(logits), jnp.asarray(targets, jnp.float32)
  per = pos_weight * targets * jax.nn.softplus(-logits) + (1.0 - targets) * jax.nn.softplus(
      logits)
  return jnp.mean(per)


def routing_loss(expert_logits: ArrayLike, router_logits: ArrayLike, labels: ArrayLike,
                 pos_weight: ArrayLike) -> jax.Array:
  """RIDE's routing loss, (1 / (E - 1)) sum_j BCE_pos(r_j, y_j) (module docstring)."""
  targets = jax.lax.stop_gradient(routing_targets(expert_logits, labels))
  router_logits = jnp.asarray(router_logits)
  _checks.check_shape(router_logits, targets.shape, "router_logits")
  per_router = jax.vmap(binary_cross_entropy_with_logits, in_axes=(0, 0, None))(
      router_logits, targets, pos_weight)
  return jnp.mean(per_router)


@dataclasses.dataclass(frozen=True)
class RIDERouting(recipe.Recipe):
  """RIDE's routing stage: trains the routers of a routed multi-expert model, nothing else.

  Each step draws a class-balanced batch, runs the model in inference mode and minimises
  `routing_loss`; evaluation reads the routed prediction ("routed_logits"). Freezing the
  experts is the trainer's job (`requirements().trainable == ("router",)`, BatchNorm
  statistics fixed). The phase's optimiser, epochs and batch size are the caller's (the
  config's `finetune` block: the reference's 5 epochs, batch 512, lr 0.01, cosine).

  Attributes:
    pos_weight: p of the routing loss (`RIDE.route_pos_weight`).
  """
  name: str = "ride_routing"
  pos_weight: float = 100.0

  def __post_init__(self):
    _checks.check_positive(self.pos_weight, "pos_weight")

  def requirements(self) -> recipe.Requirements:
    """Class-balanced draws, a multi-expert model; trains "router" with fixed statistics."""
    return dataclasses.replace(super().requirements(), draws=(samplers.Law("class_balanced"),),
                               experts=True, outputs=(ROUTER_KEY, "routed_logits"),
                               trainable=("router",), train_batch_stats=False)

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    batch = ctx.draw(ctx.keys("draw")["draw"], samplers.Law("class_balanced"))
    outputs, _ = forward._replace(train=False)(batch.x)
    loss = routing_loss(outputs[EXPERT_KEY], outputs[ROUTER_KEY], batch.labels,
                        self.pos_weight)
    metrics = {"experts_used": jnp.mean(outputs["experts_used"])}
    return loss, recipe.LossOutput(forward, method_state, metrics, {"indices": batch.indices})

  def logits(self, outputs: Outputs) -> jax.Array:
    """The routed prediction: each sample's mean over the experts its routers chose."""
    return outputs["routed_logits"]


def phase_requirements(hp: RIDE, head: str) -> dict:
  """The `Requirements` fields a recipe configured for RIDE adds (`hp.multi_expert`): a
  multi-expert model, routers frozen while the experts train, the routing stage after."""
  if not hp.multi_expert:
    return {}
  return {"experts": True, "frozen": ("router",),
          "extra_phases": (RIDERouting(head=head, pos_weight=hp.route_pos_weight),)}
