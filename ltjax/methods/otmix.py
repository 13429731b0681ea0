"""OTmix (Gao et al.) and CMO (Park et al. 2022): CutMix of minority foregrounds onto
majority backgrounds, paired by optimal transport (OTmix) or at random (CMO).

Each step: the background batch is the clean instance-balanced batch (x_b, y_b); the
foreground batch (x_f, y_f) is drawn from the whole training set with the inverse-frequency
law q_k ~ n_k^-r (eq. 3, r = 1). Each foreground image i takes a background j(i):

- OT pairing (eq. 4-8): C_ij = w (1 - cos(z_i, z_j)) + (1 - w)(1 - F_hat[y_i, y_j]) with
  z the backbone features (by default of the model in inference mode, stop-gradient; see
  `ot_features` below for the code's training-mode passes) and F_hat the
  row-normalised, zero-diagonal confusion matrix; entropic OT with uniform marginals
  (ott-jax log-domain Sinkhorn, eps = 0.01); j(i) = argmax_j T_ij (repeats allowed).
- random pairing (CMO): a random permutation of the background batch.

Then CutMix (lam ~ Beta(alpha, alpha), alpha = 4, one box per batch as in the reference
code) pastes the box of x_f[i] onto x_b[j(i)]; label lam y_bg + (1 - lam) y_fg with lam
recomputed from the clipped box. The box's centre is uniform (CutMix, `box_placement=
"uniform"`), or the saliency peak of the foreground image (`box_placement="saliency"`:
"OTmix (SaliencyMix)", OTmix sec. 5.3 / Table 3, with SaliencyMix's box, Uddin et al. 2021,
`mixing.saliency_box`); the batch's one box is then centred on the first foreground image's
peak, as the SaliencyMix code centres its one box on its first source image
(`saliency_bbox(input[rand_index[0]], lam)`), and `per_sample_box` centres each box on its
own foreground's peak. The loss is the recipe's criterion (CE, DRW, balanced
softmax / BALMS, LDAM-DRW).

Per epoch (`on_epoch`): F_hat is recomputed from the model's predictions on a fixed
class-balanced subset of the *training* set (m images per class, drawn once from
`subset_seed`, uniformly with replacement inside each class; never the test set, which the
authors' CIFAR code used), and a uniform number u is drawn from the epoch key; the epoch
uses OT pairing iff u < ((e + 1) / T)^mu (y_random ~ Bernoulli(t/T)^mu, sec. 3.3, with
t = e + 1 for the 0-based epoch e), random pairing otherwise.

Reference-code options (off by default; JintongGao/Enhancing-Minority-Classes-by-Mixing
final_otmix/cifar_train.py and imagenet_train.py, naver-ai/cmo cifar_train.py):

- `mix_prob` < 1 mixes a batch only with that probability (reference: 0.5) and
  `mix_window=(3, 3)` mixes only for 3 < e < T - 3, with e the 0-based epoch: the code's
  `args.start_data_aug < epoch < (args.epochs - args.end_data_aug)` runs over
  `for epoch in range(args.start_epoch, args.epochs)`, 0-based too, so (3, 3) means the
  same epochs (e = 4, ..., T - 4). An unmixed batch trains on the clean batch with hard
  labels.
- `ot_gate="code"`: epoch e uses OT pairing with probability (e / T)^mu, the code's
  `np.random.binomial(n=1, p=(epoch / args.epochs) ** args.u)` on its 0-based epoch
  (epoch 0 never pairs by OT); default "paper": ((e + 1) / T)^mu, t = e + 1.
- `ot_features`: the features of the OT cost. "inference" (default): pooled backbone
  features of one inference-mode pass over both batches (stop-gradient; the batch
  statistics are untouched). The code instead runs the model in training mode, first on
  the background (clean) batch, then on the foreground batch, each normalised with its own
  batch statistics, and these passes update the running statistics before the mixed
  batch's training pass: "train_unpooled" is the CIFAR code, `model_f =
  nn.Sequential(*list(model.children())[:-1])`, i.e. the flattened last-stage map before
  pooling, without the ReLU after the stem's batch norm (the model is called with
  `stem_relu=False`, see `ResNetCifar`); "train" is the ImageNet / iNat code,
  `f, _ = model(input)`, the pooled features. The feature passes run only when the batch
  is mixed in an OT epoch (the code computes them inside its mixing branch). Apart from
  these, the code passes each batch through the model once (CMO: always), which the
  recipe does as well.

Defaults (sec. 4, CIFAR): w = 0.05, eps = 0.01, r = 1, alpha = 4, mu = 1; m = 20 images per
class for F_hat (the paper's "small balanced subset" has no stated size). DRW variants start
at epoch 160 of 240. CMO = `ot=False`. On balanced data (OTmix sec. 5.3) the foreground law
is uniform over classes for every r, i.e. two uniform batches, as the paper says.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ltjax import _checks, metrics, mixing, pairing, recipe, samplers
from ltjax.methods import common

OT_FEATURES = ("inference", "train", "train_unpooled")
OT_GATES = ("paper", "code")
BOX_PLACEMENTS = ("uniform", "saliency")


def ot_probability(epoch: jax.Array, num_epochs: int, mu: float, gate: str = "paper"
                   ) -> jax.Array:
  """Probability that epoch e (0-based) of T uses OT pairing.

  "paper": ((e + 1) / T)^mu (sec. 3.3 with t = e + 1); "code": (e / T)^mu (the OTmix code's
  0-based epoch).
  """
  t = epoch + 1 if gate == "paper" else epoch
  return (jnp.asarray(t, jnp.float32) / num_epochs) ** mu


def confusion_subset(index: samplers.ClassIndex, per_class: int, seed: int) -> jax.Array:
  """(K * per_class,) training indices: `per_class` uniform draws inside each class.

  Fixed by `seed`, so every epoch evaluates the same images.
  """
  classes = jnp.repeat(jnp.arange(index.num_classes, dtype=jnp.int32), per_class)
  return samplers.draw_from_classes(jax.random.key(seed), index, classes)


@dataclasses.dataclass(frozen=True)
class OTmix(common.SupervisedRecipe):
  """OTmix (ot=True) or CMO (ot=False); see the module docstring for defaults and sources.

  Attributes:
    ot: OT pairing with probability ((e+1)/T)^mu (OTmix), else always random (CMO).
    alpha: Beta(alpha, alpha) of the CutMix factor (4).
    r: inverse-frequency power of the foreground sampler (1).
    w: weight of the feature cost (0.05).
    epsilon: Sinkhorn entropic regularisation (0.01).
    mu: exponent of the OT-pairing probability (1).
    confusion_per_class: m, training images per class for F_hat (20).
    subset_seed: seed of that subset (0).
    per_sample_box: one CutMix box per sample instead of one per batch.
    mix_prob: probability that a batch is mixed (1.0; reference code 0.5).
    mix_window: None, or (start, end) to mix only for start < e < T - end with the 0-based
      epoch e (reference (3, 3), same numbering).
    ot_features: "inference" (default), "train" or "train_unpooled" (reference code,
      training-mode feature passes; see the module docstring).
    ot_gate: "paper" ((e + 1) / T)^mu (default) or "code" (e / T)^mu.
    box_placement: "uniform" (CutMix, default) or "saliency" (SaliencyMix: centred on the
      foreground's spectral-residual saliency peak; `cut_box`).
    criterion: supervised loss (CE; registry variants DRW / balanced softmax / LDAM-DRW).
  """
  name: str = "otmix"
  ot: bool = True
  alpha: float = 4.0
  r: float = 1.0
  w: float = 0.05
  epsilon: float = 0.01
  mu: float = 1.0
  confusion_per_class: int = 20
  subset_seed: int = 0
  per_sample_box: bool = False
  mix_prob: float = 1.0
  mix_window: tuple[int, int] | None = None
  ot_features: str = "inference"
  ot_gate: str = "paper"
  box_placement: str = "uniform"

  def __post_init__(self):
    super().__post_init__()
    _checks.check_positive(self.alpha, "alpha")
    _checks.check_positive(self.r, "r", allow_zero=True)
    _checks.check_in_range(self.w, "w", 0.0, 1.0)
    _checks.check_positive(self.epsilon, "epsilon")
    _checks.check_positive(self.mu, "mu", allow_zero=True)
    if self.confusion_per_class < 1:
      raise ValueError(f"confusion_per_class must be >= 1, got {self.confusion_per_class}.")
    _checks.check_in_range(self.mix_prob, "mix_prob", 0.0, 1.0)
    if self.mix_window is not None and (len(self.mix_window) != 2
                                        or min(self.mix_window) < 0):
      raise ValueError(f"mix_window must be None or (start, end) with non-negative "
                       f"epochs, got {self.mix_window}.")
    if self.ot_features not in OT_FEATURES:
      raise ValueError(f"Unknown ot_features {self.ot_features!r}; valid: "
                       f"{', '.join(OT_FEATURES)}.")
    if self.ot_gate not in OT_GATES:
      raise ValueError(f"Unknown ot_gate {self.ot_gate!r}; valid: {', '.join(OT_GATES)}.")
    if self.box_placement not in BOX_PLACEMENTS:
      raise ValueError(f"Unknown box_placement {self.box_placement!r}; valid: "
                       f"{', '.join(BOX_PLACEMENTS)}.")

  def requirements(self) -> recipe.Requirements:
    """Inverse-frequency foregrounds; OT pairing reads the model's pooled features, or its
    un-pooled last-stage map with `ot_features="train_unpooled"`."""
    unpooled = self.ot_features == "train_unpooled"
    return dataclasses.replace(
        super().requirements(), draws=(self.foreground_law(),),
        needs_features=self.ot and not unpooled, needs_feature_map=self.ot and unpooled)

  def init_state(self, class_counts: jax.Array) -> dict[str, jax.Array] | tuple:
    """{"confusion": F_hat (K, K), "draw": u} for OTmix (zeros until the first epoch); () for CMO."""
    if not self.ot:
      return ()
    k = jnp.shape(class_counts)[0]
    return {"confusion": jnp.zeros((k, k), jnp.float32), "draw": jnp.ones((), jnp.float32)}

  def foreground_law(self) -> samplers.Law:
    """The foreground sampler: q_k ~ n_k^-r (r = 0: class-balanced, the code's)."""
    return samplers.Law("inverse_power", r=self.r)

  def epoch_subset(self, index: samplers.ClassIndex) -> jax.Array | None:
    """The fixed subset F_hat is computed on (`confusion_subset`); None for CMO."""
    if not self.ot:
      return None
    return confusion_subset(index, self.confusion_per_class, self.subset_seed)

  def on_epoch(self, method_state, ctx: recipe.EpochContext):
    """Recomputes F_hat on the fixed training subset and draws the epoch's OT gate."""
    if not self.ot:
      return method_state
    data = ctx.data
    idx = self.epoch_subset(data.index)
    preds = ctx.predict(idx, self.logits)
    counts = metrics.confusion_matrix(data.labels[idx].astype(jnp.int32), preds,
                                      data.num_classes)
    return {"confusion": pairing.normalized_confusion(counts).astype(jnp.float32),
            "draw": jax.random.uniform(ctx.key)}

  def uses_ot(self, method_state, epoch: jax.Array, num_epochs: int) -> jax.Array:
    """Whether this epoch pairs by OT (bool scalar; always False for CMO)."""
    if not self.ot:
      return jnp.zeros((), bool)
    return method_state["draw"] < ot_probability(epoch, num_epochs, self.mu, self.ot_gate)

  def train_features(self, forward: recipe.Forward, x: jax.Array
                     ) -> tuple[jax.Array, recipe.Forward]:
    """OT features of one batch from a training-mode pass (stop-gradient) and the Forward
    with the statistics that pass updated ("train": pooled; "train_unpooled": last-stage
    map, stem ReLU dropped)."""
    if self.ot_features == "train":
      outputs, forward = forward(x)
      return jax.lax.stop_gradient(outputs["features"]), forward
    outputs, forward = forward(x, stem_relu=False)
    if "feature_map" not in outputs:
      raise ValueError("ot_features='train_unpooled' needs a model that returns "
                       f"'feature_map' (ResNet-32, SmallCNN, ImageNet ResNets); got "
                       f"{sorted(outputs)}.")
    return jax.lax.stop_gradient(outputs["feature_map"]), forward

  def ot_step(self, forward: recipe.Forward, method_state, x_f, y_f, x_b, y_b
              ) -> tuple[jax.Array, recipe.Forward]:
    """Row argmax of the OT plan (background index of each foreground image) and the
    Forward after the feature passes (unchanged with ot_features="inference")."""
    if self.ot_features == "inference":
      features = common.inference_outputs(forward, jnp.concatenate([x_f, x_b]))["features"]
      z_f, z_b = features[:x_f.shape[0]], features[x_f.shape[0]:]
    else:  # the code's order: background, then foreground
      z_b, forward = self.train_features(forward, x_b)
      z_f, forward = self.train_features(forward, x_f)
    cost = pairing.ot_cost(z_f, z_b, y_f, y_b, method_state["confusion"], self.w)
    return pairing.ot_pairs(cost, self.epsilon), forward

  def ot_partners(self, forward: recipe.Forward, method_state, x_f, y_f, x_b, y_b
                  ) -> jax.Array:
    """Background index of each foreground image: row argmax of the OT plan."""
    return self.ot_step(forward, method_state, x_f, y_f, x_b, y_b)[0]

  def partners(self, key: jax.Array, forward: recipe.Forward, ctx: recipe.StepContext,
               method_state, fore: recipe.Batch, back: recipe.Batch, mixed: jax.Array
               ) -> tuple[jax.Array, recipe.Forward]:
    """OT partners for a mixed batch of an OT epoch, a random permutation otherwise; and
    the Forward after the OT feature passes."""
    random = lambda: pairing.random_pairs(key, back.labels.shape[0])
    if not self.ot:
      return random(), forward

    def by_ot():
      partner, after = self.ot_step(forward, method_state, fore.x, fore.labels, back.x,
                                    back.labels)
      return partner, after.batch_stats

    use = self.uses_ot(method_state, ctx.epoch, ctx.num_epochs) & mixed
    partner, batch_stats = jax.lax.cond(use, by_ot, lambda: (random(), forward.batch_stats))
    return partner, forward._replace(batch_stats=batch_stats)

  def mix_gate(self, key: jax.Array, ctx: recipe.StepContext) -> jax.Array:
    """Whether this batch is mixed (always, unless the reference-code options are set)."""
    gate = jax.random.uniform(key) < self.mix_prob
    if self.mix_window is not None:
      start, end = self.mix_window
      gate &= (ctx.epoch > start) & (ctx.epoch < ctx.num_epochs - end)
    return gate

  def cut_box(self, key: jax.Array, lam: jax.Array, x_fore: jax.Array) -> mixing.Box:
    """The CutMix box of side (H sqrt(1 - lam), W sqrt(1 - lam)): a uniform centre, or the
    saliency peak of the foreground (each one's with `per_sample_box`, else the first's)."""
    if self.box_placement == "uniform":
      return mixing.cutmix_box(key, lam, *x_fore.shape[1:3])
    if self.per_sample_box:
      return mixing.saliency_box(x_fore, lam)
    return tuple(bound[0] for bound in mixing.saliency_box(x_fore[:1], lam))

  def loss(self, forward: recipe.Forward, ctx: recipe.StepContext, method_state
           ) -> tuple[jax.Array, recipe.LossOutput]:
    keys = ctx.keys("back", "fore", "pair", "lam", "box", "gate")
    back = ctx.clean_batch(keys["back"])
    fore = ctx.draw(keys["fore"], self.foreground_law())
    mixed = self.mix_gate(keys["gate"], ctx)
    partner, forward = self.partners(keys["pair"], forward, ctx, method_state, fore, back,
                                     mixed)
    lam = mixing.sample_lambda(keys["lam"], self.alpha,
                               (back.labels.shape[0],) if self.per_sample_box else ())
    box = self.cut_box(keys["box"], lam, fore.x)
    x_mix, lam_back = mixing.paste_box(common.take(back.x, partner), fore.x, box)
    x = jnp.where(mixed, x_mix, back.x)
    labels = mixing.MixedLabels(jnp.where(mixed, common.take(back.labels, partner),
                                          back.labels),
                                jnp.where(mixed, fore.labels, back.labels),
                                jnp.where(mixed, lam_back, 1.0))
    loss, _, forward = self.supervised(forward, x, labels, ctx)
    draws = {"indices_back": back.indices, "indices_fore": fore.indices, "partner": partner,
             "box": jnp.stack(box, axis=-1), "mixed": mixed}
    return loss, recipe.LossOutput(forward, method_state,
                                   {"lam": lam_back.mean(), "mixed": mixed.astype(jnp.float32)},
                                   draws)
