"""CP-Mix: mixup of confusion pairs (CP-Mix paper, Algorithm 1 and Appendix A).

Method state: a K x K count matrix C, C[t, p] = number of training samples of class t
predicted as p != t, accumulated from every training step's predictions on its clean batch
(the paper's multiset CP, footnote 2; `pairing.confusion_matrix_update`). Objective (eq. 13):

    L = L_BS(clean batch) + g_cp * L_CE(CP batch) + g_mix * L_CE(mixup of the clean batch)

- L_BS: balanced softmax (logits + log n_k / N) on the clean batch, whose training-mode
  predictions feed C;
- L_mix (stage 2 only by default): in-batch mixup of the clean batch (random permutation),
  with the same mixing as the CP batch (Appendix A: "the same mixup strategy for both"):
  lam ~ Beta(alpha), CP-Mix label rule; `mix_label_rule="vanilla"` gives plain mixup
  labels. Stage 1 is ERM with balanced softmax plus the collection of confusion pairs
  (Appendix B.3: "The only difference between our first stage and ERM training is that
  CP-Mix should collect confusion-pairs"); `mix_from="start"` adds L_mix from epoch 0;
- L_CP (stage 2 only, epoch >= stage2_epoch):
  B' true classes uniform over the K classes, a confused class for each from its row of C
  (`pairing.confusion_partners`; a row with no confusion yet draws uniformly from the other
  classes), one training image of each class uniformly (`samplers.draw_from_classes`),
  x = lam x_t + (1 - lam) x_m, lam_y = t lam + (1 - t) n_m / (n_t + n_m) (eq. 9).

Every loss term runs its own forward pass (own batch statistics), as separate batches; a
term that is off is a `lax.cond` branch that runs no forward pass.

Defaults (CIFAR-LT, Table 6): alpha = 1.5, t = 0.5, g_cp = g_mix = 2.5, stage 2 from epoch
200 of 300 (the registry rescales to the run: 2/3 of the epochs), B' = B (not given in the
paper). Then `CPMixFinetune` re-trains the classifier with the backbone frozen.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ltjax import _checks, label_rules, losses, pairing, recipe, samplers
from ltjax.methods import common, mixup, ride as ride_lib

MIX_LABEL_RULES = ("cpmix", "vanilla")
MIX_FROM = ("stage2", "start")


@dataclasses.dataclass(frozen=True)
class CPMix(recipe.Recipe):
  """CP-Mix training (both stages in one compiled step; see the module docstring).

  Attributes:
    alpha: Beta(alpha, alpha) of both mixings (1.5, CIFAR, Table 6).
    t: label-rule trade-off (0.5, Table 6).
    gamma_cp: weight of the CP term (2.5, Table 6).
    gamma_mix: weight of the in-batch mixup term (2.5, Table 6).
    stage2_epoch: first epoch with the CP term (200 of 300, sec. B.3.1).
    cp_batch_size: B' (None: the training batch size).
    mix_label_rule: label rule of the in-batch mixup term, "cpmix" (Appendix A) or "vanilla".
    mix_from: when the in-batch mixup term starts: "stage2" (default; Appendix B.3: "The
      only difference between our first stage and ERM training is that CP-Mix should
      collect confusion-pairs") or "start" (every epoch, ltjax 0.1's behaviour).
    logit_scale: s > 0 multiplying the logits in every training loss (1: none). With a
      normalised (cosine) head this is the scaled cosine classifier that CP-Mix uses on
      iNaturalist ("a normed layer ... following the literature": LDAM / RIDE, s = 30);
      like LDAM's s it lives in the loss, and predictions (argmax) do not depend on it.
    ride: RIDE's diversity-loss hyperparameters (`ltjax.methods.ride`): with a
      multi-expert model every term (balanced softmax, CP, mixup) is RIDE's loss of that
      term (the term per expert plus the diversity term, at logit scale `logit_scale`);
      `ride.multi_expert=True` ("cp_mix_ride") requires such a model.
  """
  name: str = "cp_mix"
  alpha: float = 1.5
  t: float = 0.5
  gamma_cp: float = 2.5
  gamma_mix: float = 2.5
  stage2_epoch: int = 200
  cp_batch_size: int | None = None
  mix_label_rule: str = "cpmix"
  mix_from: str = "stage2"
  logit_scale: float = 1.0
  ride: ride_lib.RIDE = ride_lib.RIDE()

  def __post_init__(self):
    if not isinstance(self.ride, ride_lib.RIDE):
      raise ValueError(f"ride must be a ltjax.methods.ride.RIDE, got "
                       f"{type(self.ride).__name__}.")
    _checks.check_positive(self.alpha, "alpha")
    _checks.check_in_range(self.t, "t", 0.0, 1.0)
    _checks.check_positive(self.gamma_cp, "gamma_cp", allow_zero=True)
    _checks.check_positive(self.gamma_mix, "gamma_mix", allow_zero=True)
    _checks.check_positive(self.logit_scale, "logit_scale")
    if int(self.stage2_epoch) != self.stage2_epoch or self.stage2_epoch < 0:
      raise ValueError(f"stage2_epoch must be a non-negative integer, got "
                       f"{self.stage2_epoch}.")
    if self.cp_batch_size is not None and self.cp_batch_size < 1:
      raise ValueError(f"cp_batch_size must be >= 1, got {self.cp_batch_size}.")
    if self.mix_from not in MIX_FROM:
      raise ValueError(f"Unknown mix_from {self.mix_from!r}; valid: {', '.join(MIX_FROM)}.")
    if self.mix_label_rule not in MIX_LABEL_RULES:
      raise ValueError(f"Unknown mix_label_rule {self.mix_label_rule!r}; valid: "
                       f"{', '.join(MIX_LABEL_RULES)}.")

  def requirements(self) -> recipe.Requirements:
    """CP batches draw confusion pairs; the classifier fine-tuning phase follows (same
    head and logit scale), or with RIDE the routing stage (`ride.phase_requirements`: CP-Mix
    appendix B.3 does not fine-tune the classifier of its RIDE runs)."""
    finetune = CPMixFinetune(head=self.head, logit_scale=self.logit_scale)
    needs = {"draws": (samplers.Law("confusion"),), "extra_phases": (finetune,),
             **ride_lib.phase_requirements(self.ride, self.head)}
    return dataclasses.replace(super().requirements(), **needs)

  def term_loss(self, outputs: recipe.Outputs, loss_fn, ctx: recipe.StepContext
                ) -> jax.Array:
    """`loss_fn(logit_scale * logits)`, or RIDE's loss of it on a multi-expert model's
    "expert_logits" (`ride.supervised_loss`)."""
    return ride_lib.supervised_loss(outputs, lambda z: loss_fn(self.logit_scale * z),
                                    self.ride, ctx.class_counts, ctx.epoch, self.logit_scale)

  def init_state(self, class_counts: jax.Array) -> dict[str, jax.Array]:
    """Zero confusion counts {"confusion": (K, K) int32}."""
    k = jnp.shape(class_counts)[0]
    return {"confusion": jnp.zeros((k, k), jnp.int32)}

  def cp_pairs(self, key: jax.Array, confusion: jax.Array, num_classes: int, num: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """A CP batch's classes and the keys of their images: (c_t, c_m, key_t, key_m), the
    classes (num,) each: a uniform true class, a confused class from its row of C."""
    key_t, key_m, key_it, key_im = jax.random.split(key, 4)
    true_classes = jax.random.randint(key_t, (num,), 0, num_classes, jnp.int32)
    confused = pairing.confusion_partners(key_m, confusion, true_classes)
    return true_classes, confused, key_it, key_im

  def cp_loss(self, forward: recipe.Forward, ctx: recipe.StepContext, confusion: jax.Array,
              key: jax.Array) -> tuple[jax.Array, recipe.Forward, dict[str, jax.Array]]:
    """L_CE on a CP batch drawn from the confusion counts, and the batch's draws."""
    keys = dict(zip(("pairs", "load_t", "load_m", "lam"), jax.random.split(key, 4)))
    num = self.cp_batch_size or ctx.batch_size
    c_t, c_m, key_it, key_im = self.cp_pairs(keys["pairs"], confusion, ctx.num_classes, num)
    x_t, y_t, idx_t = ctx.from_classes(key_it, keys["load_t"], c_t)
    x_m, y_m, idx_m = ctx.from_classes(key_im, keys["load_m"], c_m)
    mixed = mixup.mix_batch(keys["lam"], x_t, y_t, x_m, y_m, ctx.class_counts,
                            alpha=self.alpha, rule=label_rules.get_rule("cpmix", t=self.t))
    outputs, forward = forward(mixed.x)
    soft = mixed.labels.soft(ctx.num_classes)
    loss = self.term_loss(outputs, lambda z: losses.soft_cross_entropy(z, soft), ctx)
    draws = {"cp_true": c_t, "cp_confused": c_m, "cp_indices_t": idx_t,
             "cp_indices_m": idx_m, "cp_lam": mixed.lam}
    return loss, forward, draws

  def mix_loss(self, forward: recipe.Forward, ctx: recipe.StepContext, clean: recipe.Batch,
               key: jax.Array) -> tuple[jax.Array, recipe.Forward, dict[str, jax.Array]]:
    """L_CE of the in-batch mixup of the clean batch (random partners), and its draws."""
    key_pair, key_lam = jax.random.split(key)
    partner = pairing.random_pairs(key_pair, clean.labels.shape[0])
    mixed = mixup.mix_batch(key_lam, clean.x, clean.labels, common.take(clean.x, partner),
                            common.take(clean.labels, partner), ctx.class_counts,
                            alpha=self.alpha, rule=self.mix_rule())
    outputs, forward = forward(mixed.x)
    soft = mixed.labels.soft(ctx.num_classes)
    loss = self.term_loss(outputs, lambda z: losses.soft_cross_entropy(z, soft), ctx)
    return loss, forward, {"mix_partner": partner, "mix_lam": mixed.lam}

  def mix_rule(self) -> label_rules.Rule:
    """Label rule of the in-batch mixup term."""
    if self.mix_label_rule == "cpmix":
      return label_rules.get_rule("cpmix", t=self.t)
    return label_rules.vanilla

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("clean", "mix", "cp")
    clean = ctx.clean_batch(keys["clean"])
    outputs, forward = forward(clean.x)
    hard = common.one_hot(clean.labels, ctx.num_classes)
    loss_bs = self.term_loss(
        outputs, lambda z: losses.balanced_softmax_loss(z, hard, ctx.class_counts), ctx)
    predictions = jnp.argmax(jax.lax.stop_gradient(outputs["logits"]), axis=-1)
    confusion = pairing.confusion_matrix_update(method_state["confusion"], clean.labels,
                                                predictions)
    stage2 = ctx.epoch >= self.stage2_epoch
    mix_term = lambda f: self.mix_loss(f, ctx, clean, keys["mix"])
    loss_mix, forward, mix_draws = (mix_term(forward) if self.mix_from == "start"
                                    else _gated(stage2, mix_term, forward))
    loss_cp, forward, cp_draws = _gated(
        stage2, lambda f: self.cp_loss(f, ctx, confusion, keys["cp"]), forward)
    loss = loss_bs + self.gamma_cp * loss_cp + self.gamma_mix * loss_mix
    metrics = {"loss_bs": loss_bs, "loss_mix": loss_mix, "loss_cp": loss_cp,
               "cp_active": stage2.astype(jnp.float32)}
    draws = {"indices": clean.indices, **mix_draws, **cp_draws}
    return loss, recipe.LossOutput(forward, {"confusion": confusion}, metrics, draws)


def _gated(active: jax.Array, term, forward: recipe.Forward
           ) -> tuple[jax.Array, recipe.Forward, dict[str, jax.Array]]:
  """`term(forward) -> (loss, forward, draws)` where `active`, else zeros (no forward pass).

  A `lax.cond` on the traced epoch: one compiled step serves both stages and the inactive
  stage runs none of the term's model calls. Only the batch statistics cross the cond.
  """
  def on(batch_stats):
    loss, fwd, draws = term(forward._replace(batch_stats=batch_stats))
    return loss, fwd.batch_stats, draws

  def off(batch_stats):
    loss, _, draws = jax.eval_shape(on, batch_stats)
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    return zeros(loss), batch_stats, jax.tree.map(zeros, draws)

  loss, batch_stats, draws = jax.lax.cond(active, on, off, forward.batch_stats)
  return loss, forward._replace(batch_stats=batch_stats), draws


@dataclasses.dataclass(frozen=True)
class CPMixFinetune(recipe.Recipe):
  """CP-Mix classifier fine-tuning: class-balanced batches, frozen backbone, CE.

  Each step draws a class-balanced batch (P(k) = 1/K, then an image uniformly in the class)
  from the whole training set and minimises cross-entropy. The model runs in inference mode
  (BatchNorm uses and keeps its running statistics). Freezing the backbone's *parameters* is
  the trainer's job: the phase must use a trainable mask that updates the head only (a
  stop-gradient here would not stop weight decay or momentum from moving the backbone);
  `requirements()` says so (`trainable=("head",)`, `train_batch_stats=False`).

  Defaults (Table 6): 30 epochs, lr 0.5 (CIFAR-100) / 0.1 (CIFAR-10), momentum 0.9, wd 0
  (phase settings of the trainer, not of this recipe).

  Attributes:
    logit_scale: the main phase's `CPMix.logit_scale` (scaled cosine classifier).
  """
  name: str = "cp_mix_finetune"
  logit_scale: float = 1.0

  def __post_init__(self):
    _checks.check_positive(self.logit_scale, "logit_scale")

  def requirements(self) -> recipe.Requirements:
    """Class-balanced draws; trains the head only, with fixed BatchNorm statistics."""
    return dataclasses.replace(super().requirements(), draws=(samplers.Law("class_balanced"),),
                               trainable=("head",), train_batch_stats=False)

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("draw")
    batch = ctx.draw(keys["draw"], samplers.Law("class_balanced"))
    outputs, _ = forward._replace(train=False)(batch.x)
    loss = losses.soft_cross_entropy(self.logit_scale * outputs["logits"],
                                     common.one_hot(batch.labels, ctx.num_classes))
    return loss, recipe.LossOutput(forward, method_state, {}, {"indices": batch.indices})
