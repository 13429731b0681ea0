"""Model registry: `get_model(name, num_classes, head=..., **kwargs)`.

| name            | model                                           | input            |
|-----------------|-------------------------------------------------|------------------|
| resnet32        | ResNet-32, option-A shortcuts (0.46 M)          | 32x32 CIFAR      |
| resnet10/18/50  | ImageNet ResNets (5.4 / 11.7 / 25.6 M, K=1000)  | 224x224 ImageNet |
| resnet152       | ImageNet ResNet-152 (60.2 M, K=1000)            | 224x224 ImageNet |
| resnet18_cifar  | ResNet-18, 3x3 stem, no max pool (11.2 M, K=10) | 32x32, 64x64     |
| small_cnn       | SmallCNN (5 k)                                  | 8x8 .. 32x32     |
| mlp             | MLP                                             | (B, D) toy data  |
| dual_resnet32   | dual-branch ResNet-32 (layout="stage"/"block")  | 32x32 CIFAR      |
| dual_small_cnn  | dual-branch SmallCNN                            | 8x8 .. 32x32     |
| ride_resnet32   | RIDE ResNet-32, 3 experts (num_experts=, 0.78 M | 32x32 CIFAR      |
|                 | with K=100 and reduce_dimension=True)           |                  |
| ride_resnet10   | RIDE ResNet-10, 3 experts (stages 3-4 each)     | 224x224 ImageNet |
| ride_resnet50   | RIDE ResNet-50, 3 experts (stages 3-4 each)     | 224x224 ImageNet |
| ride_small_cnn  | multi-expert SmallCNN (num_experts=, widths=)   | 8x8 .. 32x32     |
| envnet          | EnvNet (48.6 M at K=50; widths=, hidden=)       | 16 kHz waveform  |
| envnetv2        | EnvNet-v2 (101.3 M at K=50; widths=, hidden=)   | 44.1 kHz wave    |

Every ride_* model takes num_experts=, routers= (RIDE's expert-assignment routers) and
top_choices=; ride_resnet* also reduce_dimension=.

`dtype="bfloat16"` wraps the model in `precision.MixedPrecision`: float32 parameters,
bfloat16 compute, float32 outputs.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import linen as nn

from ltjax.models import envnet as envnet_lib
from ltjax.models import (dual_branch, heads, precision, resnet_cifar, resnet_imagenet, ride,
                          small)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet32": resnet_cifar.resnet32,
    "resnet10": resnet_imagenet.resnet10,
    "resnet18": resnet_imagenet.resnet18,
    "resnet50": resnet_imagenet.resnet50,
    "resnet152": resnet_imagenet.resnet152,
    "resnet18_cifar": resnet_imagenet.resnet18_cifar,
    "small_cnn": small.small_cnn,
    "mlp": small.mlp,
    "dual_resnet32": dual_branch.dual_resnet32,
    "dual_small_cnn": dual_branch.dual_small_cnn,
    "ride_resnet32": ride.ride_resnet32,
    "ride_resnet10": ride.ride_resnet10,
    "ride_resnet50": ride.ride_resnet50,
    "ride_small_cnn": ride.ride_small_cnn,
    "envnet": envnet_lib.envnet,
    "envnetv2": envnet_lib.envnet_v2,
}


def get_model(name: str, num_classes: int, head: str = "linear", dtype: str = "float32",
              **kwargs: Any) -> nn.Module:
  """The model `name` with `num_classes` outputs and the given head.

  Args:
    name: a key of MODELS.
    num_classes: K (>= 1).
    head: "linear", "linear_nobias" or "normalized".
    dtype: compute dtype: "float32" (default), or "bfloat16" / "float16" for mixed
      precision (`precision.MixedPrecision`; parameters and outputs stay float32).
    **kwargs: model options (layout= for dual models, widths= for small_cnn and
      dual_small_cnn, hidden= for mlp; num_experts=, routers=, top_choices= for the
      ride_* models, reduce_dimension= for ride_resnet*, widths= for ride_small_cnn).

  Raises:
    ValueError: for an unknown name, head or dtype, or num_classes < 1.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  heads.check_head(head)
  low = precision.compute_dtype(dtype)
  model = MODELS[name](num_classes, head=head, **kwargs)
  return model if dtype == "float32" else precision.MixedPrecision(model, low)


def is_dual_branch(model: nn.Module) -> bool:
  """True for a dual-branch model (its outputs carry logits_c / logits_r)."""
  if isinstance(model, precision.MixedPrecision):
    model = model.model
  return isinstance(model, dual_branch.DualBranchNet)


def is_multi_expert(model: nn.Module) -> bool:
  """True for a multi-expert (RIDE) model (its outputs carry "expert_logits")."""
  return ride.is_multi_expert(model)
