"""CIFAR ResNets (He et al. 2016, section 4.2) and the staged-network pieces shared by all models.

ResNet-(6n+2): a 3x3 stem with 16 channels, three stages of n basic blocks with 16/32/64
channels (stride 2 at the start of stages 2 and 3), global average pooling and a head.
Shortcuts are option A: identity, or stride-2 subsampling `x[:, ::2, ::2]` plus zero
padding of the new channels (no parameters). ResNet-32 (n=5) with a 10-class linear head
has 464,154 parameters (0.46 M).

Conventions shared by every ltjax model:
- Batch norm: `use_running_average=not train`, momentum 0.9, epsilon 1e-5 (the PyTorch
  defaults: running = 0.9 running + 0.1 batch).
- Convolutions have no bias and PyTorch padding (3x3: 1 pixel on each side).
- CIFAR convolutions use He-normal fan-in initialisation, untruncated normal with std
  sqrt(2 / (k*k*C_in)), as `init.kaiming_normal_` in the LDAM-DRW ResNet-32 that the
  DBN-Mix, MAMix and CP-Mix CIFAR experiments build on (`CIFAR_CONV_INIT`).
- A network is an optional stem followed by stages (`StageSpec`: features, number of
  blocks, stride of the first block) of one block type; `Backbone` runs them and
  `DualBranchNet` splits the same description between a shared trunk and two branches.
- Outputs (`heads.pooled_outputs`): "logits" (B, K), "features" (B, C) = the pooled last
  stage, "feature_map" (B, H, W, C) = the last stage before pooling.
- Manifold mixup (Verma et al. 2019; `ltjax.methods.manifold`): `mix=(layer, fn)` replaces
  the hidden state h_layer by fn(h_layer) at one mixing layer of the backbone, layer 0
  being its input and layer s the output of stage s (s = 1 .. number of stages); the
  default `mix=None` leaves the network unchanged.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax import _checks
from ltjax.models import heads

ModuleDef = Callable[..., nn.Module]

CIFAR_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# (layer index, fn): fn replaces the hidden state at that mixing layer (see `mixed_at`).
Mix = tuple[int | jax.Array, Callable[[jax.Array], jax.Array]]


def mixed_at(h: jax.Array, layer: int, mix: Mix | None) -> jax.Array:
  """fn(h) if `mix = (index, fn)` selects mixing layer `layer`, else h.

  The index may be traced (drawn inside the compiled step): the choice is then a
  `jnp.where`, so fn runs at every mixing layer and only the selected result is kept.
  """
  if mix is None:
    return h
  index, fn = mix
  return jnp.where(jnp.asarray(index) == layer, fn(h), h)


def check_mix(mix: Mix | None, num_stages: int) -> None:
  """Raises ValueError for a concrete mixing layer outside 0 .. num_stages."""
  if mix is not None and isinstance(mix[0], int) and not 0 <= mix[0] <= num_stages:
    raise ValueError(f"Mixing layer must be in 0..{num_stages} (0: the input, s: the "
                     f"output of stage s), got {mix[0]}.")


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch defaults; batch statistics in training, running ones otherwise.

  Flax updates the running variance with the biased batch variance (PyTorch: unbiased,
  a factor n / (n - 1) with n = B*H*W values per channel).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def conv(features: int, kernel: int, strides: int, kernel_init: Callable,
         name: str | None = None) -> nn.Conv:
  """Bias-free convolution with PyTorch padding (kernel // 2 pixels on each side)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=kernel_init, name=name)


def option_a_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
  """Parameter-free shortcut of He et al. (2016), option A.

  `x[:, ::s, ::s, :]` followed by zero padding of the channel axis to `features`
  ((features - C) // 2 zero channels in front, the rest behind), as the LDAM-DRW
  `LambdaLayer(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))`.

  Args:
    x: (B, H, W, C) input of the block.
    features: output channels (>= C).
    strides: spatial subsampling step s.

  Returns:
    (B, ceil(H/s), ceil(W/s), features) shortcut.
  """
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f"Option-A shortcut cannot reduce channels: {x.shape[-1]} -> {features}.")
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with a residual connection: relu(bn(conv(relu(bn(conv(x))))) + s(x)).

  Attributes:
    features: output channels.
    strides: stride of the first convolution.
    shortcut: "A" (parameter-free subsample + zero padding, CIFAR ResNets) or "B"
      (1x1 conv + BN projection, ImageNet ResNets) when the shape changes.
    kernel_init: convolution initialiser.
  """
  features: int
  strides: int = 1
  shortcut: str = "A"
  kernel_init: Callable = CIFAR_CONV_INIT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = conv(self.features, 3, self.strides, self.kernel_init, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = conv(self.features, 3, 1, self.kernel_init, name="conv2")(y)
    y = batch_norm(train, "bn2")(y)
    return nn.relu(y + residual(x, self.features, self.strides, self.shortcut,
                                self.kernel_init, train))


def residual(x: jax.Array, features: int, strides: int, shortcut: str,
             kernel_init: Callable, train: bool) -> jax.Array:
  """Identity when the shape is kept, else an option-A or option-B shortcut.

  Called inside a compact method: option B creates "shortcut_conv" and "shortcut_bn".
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  if shortcut == "A":
    return option_a_shortcut(x, features, strides)
  if shortcut == "B":
    y = conv(features, 1, strides, kernel_init, name="shortcut_conv")(x)
    return batch_norm(train, "shortcut_bn")(y)
  raise ValueError(f"Unknown shortcut {shortcut!r}; valid: 'A', 'B'.")


class CifarStem(nn.Module):
  """relu(bn(conv3x3(x))) with `features` channels, stride 1 (`relu=False`: bn(conv3x3(x)))."""
  features: int = 16
  kernel_init: Callable = CIFAR_CONV_INIT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, relu: bool = True) -> jax.Array:
    x = conv(self.features, 3, 1, self.kernel_init, name="conv")(x)
    x = batch_norm(train, "bn")(x)
    return nn.relu(x) if relu else x


class StageSpec(NamedTuple):
  """One stage: `num_blocks` blocks of `features` channels, the first with `strides`.

  `first_block` offsets the block names (a branch holding the last block of a stage names
  it as in the single-branch network).
  """
  features: int
  num_blocks: int
  strides: int
  first_block: int = 0


class Stage(nn.Module):
  """A stage: `spec.num_blocks` blocks built by `block(features=, strides=)`."""
  spec: StageSpec
  block: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.spec.num_blocks):
      strides = self.spec.strides if i == 0 else 1
      name = f"block{self.spec.first_block + i}"
      x = self.block(features=self.spec.features, strides=strides, name=name)(x, train)
    return x


class Backbone(nn.Module):
  """An optional stem (named "stem") followed by stages ("stage0", ...); no pooling.

  Attributes:
    specs: the stages.
    block: block constructor `block(features=, strides=)`.
    stem: stem constructor `stem()` (called as `stem(x, train, relu=)`), or None.
    first_stage: index of the first stage in the names (a branch continuing a trunk).
  """
  specs: tuple[StageSpec, ...]
  block: ModuleDef
  stem: ModuleDef | None = None
  first_stage: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stem_relu: bool = True,
               mix: Mix | None = None) -> jax.Array:
    """Runs the stem and the stages; `stem_relu=False` drops the stem's final ReLU (no
    effect without a stem; see `ResNetCifar`). `mix=(layer, fn)` applies fn to the input
    (layer 0) or to the output of stage `layer` (1 .. len(specs); `mixed_at`)."""
    check_mix(mix, len(self.specs))
    x = mixed_at(x, 0, mix)
    if self.stem is not None:
      x = self.stem(name="stem")(x, train, relu=stem_relu)
    for i, spec in enumerate(self.specs):
      x = Stage(spec, self.block, name=f"stage{self.first_stage + i}")(x, train)
      x = mixed_at(x, i + 1, mix)
    return x


class PooledClassifier(nn.Module):
  """Backbone, global average pooling and head (`heads.pooled_outputs`)."""
  num_classes: int
  specs: tuple[StageSpec, ...]
  block: ModuleDef
  stem: ModuleDef | None = None
  head: str = "linear"
  first_stage: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    x = Backbone(self.specs, self.block, self.stem, self.first_stage, name="backbone")(x, train)
    return heads.pooled_outputs(x, self.head, self.num_classes)


def check_images(x: jax.Array, name: str = "x") -> None:
  """Raises ValueError unless x is a (B, H, W, C) batch."""
  _checks.check_shape(x, (None, None, None, None), name)


def cifar_stage_specs(depth: int = 32, widths: Sequence[int] = (16, 32, 64)
                      ) -> tuple[StageSpec, ...]:
  """Stages of ResNet-depth (depth = 6n + 2): n blocks per stage, stride 2 after the first."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}.")
  if len(widths) != 3:
    raise ValueError(f"CIFAR ResNet needs 3 stage widths, got {tuple(widths)}.")
  n = (depth - 2) // 6
  return tuple(StageSpec(w, n, 1 if i == 0 else 2) for i, w in enumerate(widths))


class ResNetCifar(nn.Module):
  """ResNet-(6n+2) for 32x32 images (He et al. 2016) with option-A shortcuts.

  Attributes:
    num_classes: K.
    depth: 6n + 2 (32 -> 5 blocks per stage).
    widths: channels of the three stages (the stem has widths[0]).
    head: classifier head kind (see `heads.HEADS`).
  """
  num_classes: int
  depth: int = 32
  widths: tuple[int, ...] = (16, 32, 64)
  head: str = "linear"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stem_relu: bool = True,
               mix: Mix | None = None) -> dict[str, jax.Array]:
    """Returns {"logits", "features" (pooled), "feature_map" (last stage, un-pooled)}.

    `mix=(layer, fn)`: manifold mixup at mixing layer 0 (the input image), 1, 2 or 3 (the
    outputs of the three stages; the stem is part of stage 1), see `Backbone`.

    `stem_relu=False` skips the ReLU after the stem's batch norm. That is the feature
    extractor of the OTmix CIFAR code, `nn.Sequential(*list(model.children())[:-1])`
    (JintongGao/Enhancing-Minority-Classes-by-Mixing, final_otmix/cifar_train.py): the
    forward's `F.relu` after `bn1` is not a child module, so the sequence conv1, bn1,
    layer1-3 runs without it.
    """
    check_images(x)
    x = Backbone(cifar_stage_specs(self.depth, self.widths), BasicBlock,
                 stem=functools.partial(CifarStem, self.widths[0]),
                 name="backbone")(x, train, stem_relu, mix)
    return heads.pooled_outputs(x, self.head, self.num_classes)


def resnet32(num_classes: int, head: str = "linear") -> ResNetCifar:
  """ResNet-32 (5 basic blocks per stage, 16/32/64 channels, 0.46 M parameters)."""
  heads.check_head(head)
  return ResNetCifar(num_classes, depth=32, head=head)
