"""RIDE multi-expert networks (Wang et al. 2021, "Long-tailed Recognition by Routing Diverse
Distribution-Aware Experts", ICLR; code: frank-xwang/RIDE-LongTailRecognition).

A shared trunk (the stem and the first stage(s)) feeds E experts; each expert is its own
copy of the later stage(s), global average pooling and its own classifier:

    h = phi(x),   z_e = W_e pool(psi_e(h)),   e = 1 .. E,   logits = (1/E) sum_e z_e

The CIFAR network (model/ldam_drw_resnets/ride_resnet_cifar.py, `ResNet_s`, with
configs/config_imbalance_cifar100_ride.json: `num_experts=3`, `reduce_dimension=true`,
`use_norm=true`) is ResNet-32 with option-A shortcuts: stem (16 channels) and stage 1 (16)
shared; per expert stages 2 and 3 with 32 and 64 channels, or 24 and 48 with
`reduce_dimension` (the code's `layer2_output_dim` / `layer3_output_dim` defaults), and a
linear or normalised (cosine) head. With 3 experts, reduce_dimension and a 100-class
normalised head it has 783,856 parameters (the stem + stage 1: 23,824; each expert
253,344).

Logit scale: the reference multiplies each expert's cosine by s = 30 inside the network
(`out * self.s`, s = 1 for a linear head). ltjax keeps every model's normalised head a plain
cosine classifier and puts s into the loss (`Criterion.scale`, LDAM; `logit_scale` of the
RIDE loss, `ltjax.methods.ride`), so "logits" here are the reference's outputs divided by s.
Predictions (argmax) are the same.

Outputs (`__call__(x, train)`):
- "logits" (B, K): the mean of the experts' logits, the reference's `final_out`, what
  inference and every single-branch recipe read;
- "expert_logits" (E, B, K): each expert's logits (the reference's `extra_info["logits"]`);
- "features" (B, D): the mean of the experts' pooled features (ltjax's definition: the
  reference keeps them per expert, `self.feat`), e.g. for feature-space pairing;
- "expert_features" (E, B, D): each expert's pooled features;
- "feature_map" (B, H, W, D): the mean of the experts' last-stage maps (OTmix's cost).

Expert routing (RIDE sec. 3.3, the "EA" models: ride_resnet_cifar's `ResNet_s` in
model/ldam_drw_resnets/ea_resnet_cifar.py, model/fb_resnets/EAResNet.py). With
`routers=True` the network also has E - 1 routers, one module named "router": router j
reads expert j's pooled last-stage features f_j and the mean of the first j + 1 experts'
logits,

    r_j = w . [topk(s z_bar_(0..j), k), relu(W_j f_j / ||f_j||)] + b,   j = 0 .. E - 2,

(W_j: 16 hidden units per router, w and b shared by the routers, k = `top_choices`
clipped to K, s the reference's logit scale: 30 with a normalised head, else 1) and
predicts whether the next experts help. At inference sample i uses expert j + 1 iff every
router up to j says so (r_j > 0, i.e. sigmoid(r_j) > 0.5); extra outputs:
- "router_logits" (E - 1, B): r_j (trained by `ltjax.methods.ride.RIDERouting`);
- "routed_logits" (B, K): the mean logits of the experts each sample uses (the reference's
  test-time output); "experts_used" (B,): how many.
All experts are computed for every sample (XLA needs static shapes): routing changes the
prediction, not the cost. The routers are trained in a phase of their own after the
experts (`RIDERouting`); the recipes that train the experts freeze them
(`Requirements.frozen`). The reference's `use_experts="rand"` (a random subset of experts
per training step) is not implemented.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import heads, precision, resnet_imagenet, small
from ltjax.models.resnet_cifar import (Backbone, BasicBlock, CifarStem, Mix, ModuleDef,
                                       StageSpec, check_images, check_mix, cifar_stage_specs)

REDUCED_WIDTHS = (16, 24, 48)  # ride_resnet_cifar.py, reduce_dimension=True
ROUTER_HIDDEN = 16  # ea_resnet_cifar.py / EAResNet.py `expert_hidden_fc_output_dim`
REFERENCE_SCALE = 30.0  # the reference networks' s with a normalised head (`use_norm`)


class Expert(nn.Module):
  """One expert: its stages (named as in the single-branch network), pooling and head."""
  num_classes: int
  specs: tuple[StageSpec, ...]
  block: ModuleDef
  head: str
  first_stage: int

  @nn.compact
  def __call__(self, h: jax.Array, train: bool, mix: Mix | None = None
               ) -> dict[str, jax.Array]:
    h = Backbone(self.specs, self.block, first_stage=self.first_stage, name="backbone")(
        h, train, mix=expert_mix(mix, self.first_stage))
    return heads.pooled_outputs(h, self.head, self.num_classes)


def expert_mix(mix: Mix | None, first_stage: int) -> Mix | None:
  """A network-level `mix=(layer, fn)` in the numbering of an expert that starts after
  stage `first_stage`: layer s > first_stage is its stage s - first_stage; the layers of
  the shared trunk (s <= first_stage, mixed there once) become -1, which no layer matches."""
  if mix is None:
    return None
  layer, fn = mix
  return jnp.where(jnp.asarray(layer) > first_stage, jnp.asarray(layer) - first_stage, -1), fn


def torch_linear_bias(fan_in: int) -> Callable[..., jax.Array]:
  """torch.nn.Linear's default bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


class Routers(nn.Module):
  """RIDE's E - 1 expert-assignment routers (`pred_expert_help` of the EA networks).

  r_j = w . [topk(m_j, k), relu(W_j f_j / ||f_j|| + c_j)] + b: one hidden layer per router
  ("hidden{j}"), the output layer ("predict") shared (`share_expert_help_pred_fc=True`).

  Attributes:
    top_choices: k, the largest running-mean logits each router reads.
    hidden: hidden units per router (16).
    kernel_init: weight initialiser of both layers.
  """
  top_choices: int
  hidden: int = ROUTER_HIDDEN
  kernel_init: Callable = heads.HE_NORMAL_FAN_IN

  @nn.compact
  def __call__(self, features: jax.Array, running_logits: jax.Array) -> jax.Array:
    """(E - 1, B) router logits from expert j's pooled features (E - 1, B, D) and the
    (scaled) mean logits of experts 0..j (E - 1, B, K)."""
    k = min(self.top_choices, running_logits.shape[-1])
    predict = nn.Dense(1, kernel_init=self.kernel_init,
                       bias_init=torch_linear_bias(k + self.hidden), name="predict")
    out = []
    for j in range(features.shape[0]):
      f = heads.l2_normalize(features[j], axis=-1)
      h = nn.relu(nn.Dense(self.hidden, kernel_init=self.kernel_init,
                           bias_init=torch_linear_bias(f.shape[-1]), name=f"hidden{j}")(f))
      top = jax.lax.top_k(running_logits[j], k)[0]
      out.append(predict(jnp.concatenate([top, h], axis=-1))[:, 0])
    return jnp.stack(out)


def routed_outputs(expert_logits: jax.Array, router_logits: jax.Array
                   ) -> dict[str, jax.Array]:
  """Test-time routing: sample i uses expert j + 1 iff r_0 .. r_j > 0 (sigmoid > 0.5).

  Returns {"routed_logits": (B, K) mean logits of the experts used, "experts_used": (B,)}.
  """
  go_on = jnp.cumprod((router_logits > 0).astype(expert_logits.dtype), axis=0)
  used = jnp.concatenate([jnp.ones_like(go_on[:1]), go_on], axis=0)  # (E, B)
  count = jnp.sum(used, axis=0)
  routed = jnp.einsum("eb,ebk->bk", used, expert_logits) / count[:, None]
  return {"routed_logits": routed, "experts_used": count}


class MultiExpertNet(nn.Module):
  """A shared trunk (stem + the first `shared_stages` stages) and `num_experts` experts.

  Attributes:
    num_classes: K.
    specs: all stages of the single-expert network (the experts hold the last ones).
    block: block constructor.
    stem: stem constructor, or None.
    num_experts: E >= 1.
    shared_stages: stages in the shared trunk (RIDE CIFAR: 1, ImageNet ResNets: 2).
    head: classifier head of every expert (`heads.HEADS`).
    routers: add the E - 1 expert-assignment routers (module "router"; E >= 2).
    top_choices: k of the routers (30: the CIFAR-100 EA config; clipped to K).
    router_init: weight initialiser of the routers (the CIFAR code's `kaiming_normal_`).
  """
  num_classes: int
  specs: tuple[StageSpec, ...]
  block: ModuleDef
  stem: ModuleDef | None = None
  num_experts: int = 3
  shared_stages: int = 1
  head: str = "linear"
  routers: bool = False
  top_choices: int = 30
  router_init: Callable = heads.HE_NORMAL_FAN_IN

  @property
  def widths(self) -> tuple[int, ...]:
    """Channels of every stage, trunk then expert (manifold mixup's layers 1..len)."""
    return tuple(spec.features for spec in self.specs)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, mix: Mix | None = None
               ) -> dict[str, jax.Array]:
    """The outputs (module docstring); `mix=(layer, fn)`: manifold mixup at the input (0)
    or after stage `layer`, in the trunk or, with the same fn, in every expert."""
    check_images(x)
    check_experts(self.num_experts, self.shared_stages, len(self.specs), self.routers)
    check_mix(mix, len(self.specs))
    trunk_mix = None if mix is None else (
        jnp.where(jnp.asarray(mix[0]) <= self.shared_stages, mix[0], -1), mix[1])
    h = Backbone(self.specs[:self.shared_stages], self.block, self.stem,
                 name="backbone")(x, train, mix=trunk_mix)
    outs = [Expert(self.num_classes, self.specs[self.shared_stages:], self.block, self.head,
                   self.shared_stages, name=f"expert{e}")(h, train, mix)
            for e in range(self.num_experts)]
    stack = lambda key: jnp.stack([o[key] for o in outs])
    expert_logits, expert_features = stack("logits"), stack("features")
    out = {"logits": jnp.mean(expert_logits, axis=0), "expert_logits": expert_logits,
           "features": jnp.mean(expert_features, axis=0), "expert_features": expert_features,
           "feature_map": jnp.mean(stack("feature_map"), axis=0)}
    if self.routers:
      scale = REFERENCE_SCALE if self.head == "normalized" else 1.0
      steps = jnp.arange(1, self.num_experts + 1, dtype=expert_logits.dtype)[:, None, None]
      running = scale * jnp.cumsum(expert_logits, axis=0) / steps
      router_logits = Routers(self.top_choices, kernel_init=self.router_init, name="router")(
          expert_features[:-1], running[:-1])
      out.update(router_logits=router_logits,
                 **routed_outputs(expert_logits, router_logits))
    return out


def check_experts(num_experts: int, shared_stages: int, num_stages: int,
                  routers: bool = False) -> None:
  """Raises ValueError unless E >= 1 (>= 2 with routers) and every expert keeps a stage."""
  if num_experts < 1 or (routers and num_experts < 2):
    raise ValueError(f"num_experts must be >= {2 if routers else 1}"
                     f"{' (routers choose among experts)' if routers else ''}, got "
                     f"{num_experts}.")
  if not 0 <= shared_stages < num_stages:
    raise ValueError(f"shared_stages must be in 0..{num_stages - 1} (each expert needs at "
                     f"least one stage), got {shared_stages}.")


def ride_widths(reduce_dimension: bool) -> tuple[int, int, int]:
  """Stage widths of RIDE's CIFAR ResNet: (16, 24, 48) reduced, else (16, 32, 64)."""
  return REDUCED_WIDTHS if reduce_dimension else (16, 32, 64)


def ride_resnet_cifar(num_classes: int, depth: int = 32, num_experts: int = 3,
                      reduce_dimension: bool = True, head: str = "linear",
                      widths: Sequence[int] | None = None, routers: bool = False,
                      top_choices: int = 30) -> MultiExpertNet:
  """RIDE's CIFAR ResNet-depth: stem + stage 1 shared, stages 2-3 and a head per expert.

  Args:
    num_classes: K.
    depth: 6n + 2 (32: 5 blocks per stage).
    num_experts: E (3: the RIDE CIFAR config).
    reduce_dimension: expert widths 24 / 48 instead of 32 / 64 (the RIDE CIFAR config).
    head: "linear", "linear_nobias" or "normalized" (`use_norm`, RIDE with LDAM).
    widths: explicit stage widths (overrides reduce_dimension).
    routers: the expert-assignment routers (ea_resnet_cifar.py, `_weights_init`:
      kaiming-normal weights).
    top_choices: the routers' k (30: config_imbalance_cifar100_ride_ea.json).
  """
  heads.check_head(head)
  check_experts(num_experts, 1, 3, routers)
  widths = tuple(widths) if widths is not None else ride_widths(reduce_dimension)
  return MultiExpertNet(num_classes, cifar_stage_specs(depth, widths), BasicBlock,
                        stem=functools.partial(CifarStem, widths[0]), num_experts=num_experts,
                        shared_stages=1, head=head, routers=routers, top_choices=top_choices)


def ride_resnet32(num_classes: int, head: str = "linear", num_experts: int = 3,
                  reduce_dimension: bool = True, routers: bool = False,
                  top_choices: int = 30) -> MultiExpertNet:
  """RIDE ResNet-32 (CIFAR config: 3 experts, reduced dimension; `head="normalized"` with LDAM)."""
  return ride_resnet_cifar(num_classes, 32, num_experts, reduce_dimension, head,
                           routers=routers, top_choices=top_choices)


# RIDE's ImageNet ResNets (model/fb_resnets/RIDEResNet.py, EAResNet.py): stem, stages 1-2
# shared; per expert stages 3-4 of 192 / 384 planes with reduce_dimension, else 256 / 512.
IMAGENET_REDUCED_WIDTHS = (64, 128, 192, 384)


def ride_resnet_imagenet(num_classes: int, stage_sizes: tuple[int, ...], block: str,
                         head: str = "linear", num_experts: int = 3,
                         reduce_dimension: bool = True, routers: bool = False,
                         top_choices: int = 30) -> MultiExpertNet:
  """RIDE's ImageNet ResNet: the `ResNetImageNet` stem and blocks, stages 3-4 per expert.

  Routers keep torch.nn.Linear's default initialisation (EAResNet.py initialises only the
  convolutions and BatchNorms); `top_choices` defaults to 30 (set it as the EA config of
  the dataset does).
  """
  heads.check_head(head)
  check_experts(num_experts, 2, len(stage_sizes), routers)
  widths = IMAGENET_REDUCED_WIDTHS if reduce_dimension else (64, 128, 256, 512)
  specs = tuple(StageSpec(w, n, 1 if i == 0 else 2)
                for i, (w, n) in enumerate(zip(widths, stage_sizes)))
  init = resnet_imagenet.IMAGENET_CONV_INIT
  return MultiExpertNet(num_classes, specs, resnet_imagenet.block_def(block, init),
                        stem=resnet_imagenet.stem_def("imagenet", init),
                        num_experts=num_experts, shared_stages=2, head=head, routers=routers,
                        top_choices=top_choices,
                        router_init=resnet_imagenet.TORCH_DEFAULT_CONV_INIT)


def ride_resnet50(num_classes: int, head: str = "linear", num_experts: int = 3,
                  reduce_dimension: bool = True, routers: bool = False,
                  top_choices: int = 30) -> MultiExpertNet:
  """RIDE ResNet-50 (config_imagenet_lt_resnet50_ride.json: 3 experts, reduced dimension,
  normalised head; also iNaturalist 2018)."""
  return ride_resnet_imagenet(num_classes, (3, 4, 6, 3), "bottleneck", head, num_experts,
                              reduce_dimension, routers, top_choices)


def ride_resnet10(num_classes: int, head: str = "linear", num_experts: int = 3,
                  reduce_dimension: bool = True, routers: bool = False,
                  top_choices: int = 30) -> MultiExpertNet:
  """RIDE ResNet-10 (config_imagenet_lt_resnet10_ride.json)."""
  return ride_resnet_imagenet(num_classes, (1, 1, 1, 1), "basic", head, num_experts,
                              reduce_dimension, routers, top_choices)


def ride_small_cnn(num_classes: int, head: str = "linear", num_experts: int = 2,
                   widths: tuple[int, ...] = (8, 16), routers: bool = False,
                   top_choices: int = 30) -> MultiExpertNet:
  """A tiny multi-expert SmallCNN (tests, smoke runs): stage 1 shared, the rest per expert."""
  heads.check_head(head)
  return MultiExpertNet(num_classes, small.small_cnn_specs(tuple(widths)), small.ConvBNReLU,
                        num_experts=num_experts, shared_stages=1, head=head, routers=routers,
                        top_choices=top_choices)


def is_multi_expert(model: nn.Module) -> bool:
  """True for a multi-expert model (its outputs carry "expert_logits")."""
  if isinstance(model, precision.MixedPrecision):
    model = model.model
  return isinstance(model, MultiExpertNet)
