"""Small models for tests, quickstarts and toy data: SmallCNN and MLP.

SmallCNN: one conv3x3-BN-ReLU block per stage (stride 2 from the second stage), global
average pooling and a head; with widths (16, 32) and 10 classes it has 5,178 parameters on
1-channel images (8x8 digits, 28x28 Fashion-MNIST) and works for any input size. Its batch
norm exercises the `batch_stats` path of the engine. MLP: dense-ReLU layers for 2-D toy
data. Both use He-normal fan-in initialisation (`resnet_cifar.CIFAR_CONV_INIT`) and accept
any head kind.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import linen as nn

from ltjax import _checks
from ltjax.models import heads
from ltjax.models.resnet_cifar import (CIFAR_CONV_INIT, Backbone, Mix, StageSpec,
                                       batch_norm, check_images, conv)


class ConvBNReLU(nn.Module):
  """relu(bn(conv3x3(x))): the block of SmallCNN.

  Attributes:
    features: output channels.
    strides: convolution stride.
    kernel_init: convolution initialiser.
  """
  features: int
  strides: int = 1
  kernel_init: Callable = CIFAR_CONV_INIT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.features, 3, self.strides, self.kernel_init, name="conv")(x)
    return nn.relu(batch_norm(train, "bn")(x))


def small_cnn_specs(widths: tuple[int, ...]) -> tuple[StageSpec, ...]:
  """One ConvBNReLU block per width; stride 1 for the first stage, 2 afterwards."""
  if not widths:
    raise ValueError("SmallCNN needs at least one stage width.")
  return tuple(StageSpec(w, 1, 1 if i == 0 else 2) for i, w in enumerate(widths))


class SmallCNN(nn.Module):
  """Tiny CNN: stages of conv3x3-BN-ReLU, global average pooling, head.

  Attributes:
    num_classes: K.
    widths: channels of the stages (stride 2 from the second).
    head: classifier head kind (see `heads.HEADS`).
  """
  num_classes: int
  widths: tuple[int, ...] = (16, 32)
  head: str = "linear"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stem_relu: bool = True,
               mix: Mix | None = None) -> dict[str, jax.Array]:
    """Returns {"logits", "features" (pooled), "feature_map" (last stage, un-pooled)}.

    `stem_relu` is accepted for the interface of `ResNetCifar`; SmallCNN has no stem.
    `mix=(layer, fn)`: manifold mixup at mixing layer 0 (the input) or s (the output of
    stage s, 1 .. len(widths)), see `resnet_cifar.Backbone`.
    """
    check_images(x)
    x = Backbone(small_cnn_specs(self.widths), ConvBNReLU, name="backbone")(x, train,
                                                                            stem_relu, mix)
    return heads.pooled_outputs(x, self.head, self.num_classes)


class MLP(nn.Module):
  """Dense-ReLU layers and a head; inputs (B, ...) are flattened to (B, D).

  `train` is accepted for a uniform model interface (the MLP has no batch norm).

  Attributes:
    num_classes: K.
    hidden: widths of the hidden layers; features are the last hidden activations.
    head: classifier head kind (see `heads.HEADS`).
  """
  num_classes: int
  hidden: tuple[int, ...] = (64, 64)
  head: str = "linear"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    del train
    if x.ndim < 2:
      raise ValueError(f"x must have shape (B, ...), got {x.shape}.")
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      _checks.check_positive(width, f"hidden[{i}]")
      x = nn.relu(nn.Dense(width, kernel_init=heads.HE_NORMAL_FAN_IN, name=f"dense{i}")(x))
    return heads.head_outputs(x, self.head, self.num_classes)


def small_cnn(num_classes: int, head: str = "linear", widths: tuple[int, ...] = (16, 32)
              ) -> SmallCNN:
  """SmallCNN with the given head (5,178 parameters for 1-channel input, K=10, linear)."""
  heads.check_head(head)
  return SmallCNN(num_classes, widths=tuple(widths), head=head)


def mlp(num_classes: int, head: str = "linear", hidden: tuple[int, ...] = (64, 64)) -> MLP:
  """MLP with the given head."""
  heads.check_head(head)
  return MLP(num_classes, hidden=tuple(hidden), head=head)
