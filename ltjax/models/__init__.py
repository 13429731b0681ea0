"""Flax Linen models: every `model.apply(variables, x, train=...)` returns
{"logits": (B, K), "features": (B, D)}; the convolutional single-branch models add
"feature_map" (B, H, W, C), the last stage before pooling, and dual-branch models add the
per-branch outputs."""

from ltjax.models.dual_branch import DualBranchNet, dual_resnet32, dual_small_cnn
from ltjax.models.heads import HEADS, LinearHead, NormalizedLinear, make_head
from ltjax.models.precision import MixedPrecision
from ltjax.models.pretrained import PretrainedMismatchError, load_pretrained
from ltjax.models.registry import MODELS, get_model, is_dual_branch, is_multi_expert
from ltjax.models.resnet_cifar import ResNetCifar, resnet32
from ltjax.models.ride import (MultiExpertNet, ride_resnet10, ride_resnet32, ride_resnet50,
                               ride_small_cnn)
from ltjax.models.resnet_imagenet import (ResNetImageNet, resnet10, resnet18, resnet18_cifar,
                                          resnet50, resnet152)
from ltjax.models.small import MLP, SmallCNN, mlp, small_cnn

__all__ = [
    "DualBranchNet", "HEADS", "LinearHead", "MLP", "MODELS", "MixedPrecision", "NormalizedLinear",
    "PretrainedMismatchError", "ResNetCifar", "ResNetImageNet", "SmallCNN", "dual_resnet32",
    "dual_small_cnn", "get_model", "is_dual_branch", "is_multi_expert",
    "MultiExpertNet", "ride_resnet10", "ride_resnet32", "ride_resnet50", "ride_small_cnn",
    "load_pretrained", "make_head", "mlp",
    "resnet10", "resnet18", "resnet18_cifar", "resnet32", "resnet50", "resnet152", "small_cnn",
]
