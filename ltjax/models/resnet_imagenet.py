"""ImageNet ResNets (He et al. 2016) for ImageNet-LT / iNaturalist / Places-LT: ResNet-10,
-18, -50, -152.

torchvision layout ("ResNet v1.5"): 7x7/2 conv stem + BN + ReLU + 3x3/2 max pool, four
stages (64/128/256/512 planes, stride 2 from the second), projection shortcuts (option B:
1x1 conv + BN) where the shape changes, the stride on the 3x3 conv of a bottleneck,
global average pooling and a head. Convolutions use He-normal fan-out initialisation
(untruncated normal, std sqrt(2 / (k*k*C_out))) like torchvision (`IMAGENET_CONV_INIT`);
batch norm as in `resnet_cifar` (momentum 0.9, epsilon 1e-5).

Parameter counts (trainable: weights, biases, BN scale and bias) with a 1000-class linear
head: ResNet-10 5,418,792 (blocks 1/1/1/1, the ImageNet-LT baseline of Kang et al. 2020),
ResNet-18 11,689,512, ResNet-50 25,557,032, ResNet-152 60,192,808 (all three equal to
torchvision).

`resnet18_cifar` is the ResNet-18 for small images that the MAMix paper trains on
CINIC-10-LT and Tiny-ImageNet-LT (appendix A.2, A.4). Its code (ntucllab/imbalanced-DL
net/resnet_liu.py, after kuangliu/pytorch-cifar) replaces the stem by a 3x3/1 convolution +
BN + ReLU with no max pool (`stem="cifar"`), keeps the four stages and option-B shortcuts,
initialises the convolutions with PyTorch's default (`TORCH_DEFAULT_CONV_INIT`) and
classifies with a bias-free linear layer (net/network.py `dot_product_classifier`; the
configs set `head="linear_nobias"`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from flax import linen as nn

from ltjax.models import heads
from ltjax.models.resnet_cifar import (BasicBlock, Backbone, CifarStem, Mix, StageSpec,
                                       batch_norm, check_images, conv, residual)

IMAGENET_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Conv2d's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "cifar")


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 convolutions with 4x expansion and a residual connection.

  Attributes:
    features: planes of the 3x3 convolution; the block outputs 4 * features channels.
    strides: stride of the 3x3 convolution (and of the projection shortcut).
    kernel_init: convolution initialiser.
  """
  features: int
  strides: int = 1
  kernel_init: Callable = IMAGENET_CONV_INIT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = 4 * self.features
    y = nn.relu(batch_norm(train, "bn1")(conv(self.features, 1, 1, self.kernel_init, "conv1")(x)))
    y = conv(self.features, 3, self.strides, self.kernel_init, "conv2")(y)
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = batch_norm(train, "bn3")(conv(out, 1, 1, self.kernel_init, "conv3")(y))
    return nn.relu(y + residual(x, out, self.strides, "B", self.kernel_init, train))


class ImageNetStem(nn.Module):
  """maxpool3x3/2(relu(bn(conv7x7/2(x)))) with PyTorch padding (3 and 1); `relu=False`
  drops the ReLU."""
  features: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, relu: bool = True) -> jax.Array:
    x = conv(self.features, 7, 2, IMAGENET_CONV_INIT, name="conv")(x)
    x = batch_norm(train, "bn")(x)
    x = nn.relu(x) if relu else x
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def block_def(block: str, kernel_init: Callable = IMAGENET_CONV_INIT
              ) -> Callable[..., nn.Module]:
  """Block constructor for "basic" (option-B shortcut) or "bottleneck"."""
  if block == "basic":
    return functools.partial(BasicBlock, shortcut="B", kernel_init=kernel_init)
  if block == "bottleneck":
    return functools.partial(Bottleneck, kernel_init=kernel_init)
  raise ValueError(f"Unknown block {block!r}; valid blocks: {', '.join(BLOCKS)}.")


def stem_def(stem: str, kernel_init: Callable) -> Callable[..., nn.Module]:
  """Stem constructor: "imagenet" (`ImageNetStem`, 7x7/2 + max pool; its own He init) or
  "cifar" (`CifarStem` with 64 channels: 3x3/1 + BN + ReLU, `kernel_init`)."""
  if stem == "imagenet":
    return ImageNetStem
  if stem == "cifar":
    return functools.partial(CifarStem, 64, kernel_init)
  raise ValueError(f"Unknown stem {stem!r}; valid stems: {', '.join(STEMS)}.")


class ResNetImageNet(nn.Module):
  """ImageNet ResNet: stem, four stages, global average pooling, head.

  Attributes:
    num_classes: K.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: "basic" or "bottleneck".
    widths: planes of the stages.
    head: classifier head kind (see `heads.HEADS`).
    stem: "imagenet" (7x7/2 + max pool) or "cifar" (3x3/1, no pool: `resnet18_cifar`).
    kernel_init: initialiser of the blocks' (and the CIFAR stem's) convolutions.
  """
  num_classes: int
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  block: str = "basic"
  widths: tuple[int, ...] = (64, 128, 256, 512)
  head: str = "linear"
  stem: str = "imagenet"
  kernel_init: Callable = IMAGENET_CONV_INIT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stem_relu: bool = True,
               mix: Mix | None = None) -> dict[str, jax.Array]:
    """Returns {"logits", "features" (pooled), "feature_map" (last stage, un-pooled)};
    `stem_relu=False` drops the stem's ReLU (as `ResNetCifar`); `mix=(layer, fn)`:
    manifold mixup at the input (0) or after stage `layer` (1..4), see `Backbone`."""
    check_images(x)
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {self.stage_sizes} and widths {self.widths} must have "
                       "the same length.")
    specs = tuple(StageSpec(w, n, 1 if i == 0 else 2)
                  for i, (w, n) in enumerate(zip(self.widths, self.stage_sizes)))
    x = Backbone(specs, block_def(self.block, self.kernel_init),
                 stem=stem_def(self.stem, self.kernel_init), name="backbone")(
                     x, train, stem_relu, mix)
    return heads.pooled_outputs(x, self.head, self.num_classes)


def _resnet(stage_sizes: tuple[int, ...], block: str, num_classes: int, head: str
            ) -> ResNetImageNet:
  heads.check_head(head)
  return ResNetImageNet(num_classes, stage_sizes=stage_sizes, block=block, head=head)


def resnet10(num_classes: int, head: str = "linear") -> ResNetImageNet:
  """ResNet-10: basic blocks 1/1/1/1 (5.42 M parameters with 1000 classes)."""
  return _resnet((1, 1, 1, 1), "basic", num_classes, head)


def resnet18(num_classes: int, head: str = "linear") -> ResNetImageNet:
  """ResNet-18: basic blocks 2/2/2/2 (11.69 M parameters with 1000 classes)."""
  return _resnet((2, 2, 2, 2), "basic", num_classes, head)


def resnet50(num_classes: int, head: str = "linear") -> ResNetImageNet:
  """ResNet-50: bottlenecks 3/4/6/3 (25.56 M parameters with 1000 classes)."""
  return _resnet((3, 4, 6, 3), "bottleneck", num_classes, head)


def resnet152(num_classes: int, head: str = "linear") -> ResNetImageNet:
  """ResNet-152: bottlenecks 3/8/36/3 (60.19 M parameters with 1000 classes; the Places-LT
  backbone of Liu et al. 2019, Kang et al. 2020 and CP-Mix B.2.3)."""
  return _resnet((3, 8, 36, 3), "bottleneck", num_classes, head)


def resnet18_cifar(num_classes: int, head: str = "linear") -> ResNetImageNet:
  """ResNet-18 for 32x32 / 64x64 images (3x3/1 stem, no max pool, PyTorch-default conv
  init; the MAMix code's `resnet18`, see the module docstring)."""
  heads.check_head(head)
  return ResNetImageNet(num_classes, stage_sizes=(2, 2, 2, 2), block="basic", head=head,
                        stem="cifar", kernel_init=TORCH_DEFAULT_CONV_INIT)
