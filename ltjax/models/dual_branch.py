"""Dual-branch networks (BBN, Zhou et al. 2020; DBN-Mix, Baik, Yoon and Choi).

A shared trunk phi feeds two branches, the conventional-learning branch psi_c and the
re-balancing branch psi_r, each ending in global average pooling and its own head
(DBN-Mix eqs. 3-4: z_c = psi_c(phi(x_c)), z_r = psi_r(phi(x_r))). Two layouts split the same
staged backbone (`resnet_cifar.StageSpec`):

| layout  | trunk                          | each branch                   | source       |
|---------|--------------------------------|-------------------------------|--------------|
| "stage" | stem + all stages but the last | a full copy of the last stage | DBN-Mix code |
| "block" | everything but the last block  | a copy of the last block      | BBN          |

Parameter names follow the single-branch network (the block-layout branch holds
"stage2/block4" of ResNet-32). For ResNet-32 with a 10-class linear head the stage layout
has 464,154 + 352,138 (stage 3 + head) = 816,292 parameters and the block layout
464,154 + 74,634 (last block + head) = 538,788.

Training (`x_rebalance` given), two trunk modes (`trunk=` keyword of the call):

- "joint" (default): the trunk runs once on concat([x, x_rebalance]), branch c on the x
  half and branch r on the x_rebalance half; the trunk's batch norm normalises over the
  joint batch of both samplers and updates its running statistics once.
- "separate" (DBN-Mix code, soony1213/DBN-Mix main.py: `model(input, classifier_cb=True)`
  then `model(input_b, classifier_rb=True)`; BBN likewise runs the backbone once per
  batch): trunk and branch c on x, then trunk and branch r on x_rebalance. Each batch is
  normalised with its own statistics and the trunk's running statistics are updated twice,
  first with the x batch, then with the x_rebalance batch.

Inference (`x_rebalance=None`): both branches see x and the prediction is the average of
the two branches' logits, without temperature (DBN-Mix eq. 20).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import heads
from ltjax.models.resnet_cifar import (BasicBlock, Backbone, CifarStem, ModuleDef,
                                       PooledClassifier, StageSpec, check_images,
                                       cifar_stage_specs)
from ltjax.models.small import ConvBNReLU, small_cnn_specs

LAYOUTS = ("stage", "block")
TRUNKS = ("joint", "separate")


def check_layout(layout: str) -> None:
  """Raises ValueError unless `layout` is one of LAYOUTS."""
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown dual-branch layout {layout!r}; valid layouts: "
                     f"{', '.join(LAYOUTS)}.")


def check_trunk(trunk: str) -> None:
  """Raises ValueError unless `trunk` is one of TRUNKS."""
  if trunk not in TRUNKS:
    raise ValueError(f"Unknown trunk mode {trunk!r}; valid: {', '.join(TRUNKS)}.")


def split_specs(specs: tuple[StageSpec, ...], layout: str
                ) -> tuple[tuple[StageSpec, ...], tuple[StageSpec, ...]]:
  """Splits a staged backbone into (trunk stages, branch stages) for a dual-branch layout.

  Args:
    specs: stages of the single-branch backbone.
    layout: "stage" (the branch is the whole last stage) or "block" (the branch is the
      last block of the last stage; the trunk keeps the others).

  Returns:
    (trunk_specs, branch_specs); running them in sequence equals the original stages.
  """
  check_layout(layout)
  if not specs:
    raise ValueError("A dual-branch network needs at least one stage.")
  *head_specs, last = specs
  if layout == "stage" or last.num_blocks == 1:
    return tuple(head_specs), (last,)
  return (tuple(head_specs) + (last._replace(num_blocks=last.num_blocks - 1),),
          (StageSpec(last.features, 1, 1, first_block=last.num_blocks - 1),))


class DualBranchNet(nn.Module):
  """Shared trunk and two branches (conventional "c", re-balancing "r").

  Defaults build the DBN-Mix ResNet-32 (stage layout). Parameters live under "trunk",
  "branch_c" and "branch_r".

  Attributes:
    num_classes: K.
    layout: "stage" or "block" (see the module docstring).
    head: classifier head kind of both branches (see `heads.HEADS`).
    specs: stages of the underlying single-branch backbone.
    block: block constructor `block(features=, strides=)`.
    stem: stem constructor (part of the trunk), or None.
  """
  num_classes: int
  layout: str = "stage"
  head: str = "linear"
  specs: tuple[StageSpec, ...] = cifar_stage_specs(32, (16, 32, 64))
  block: ModuleDef = BasicBlock
  stem: ModuleDef | None = CifarStem

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, x_rebalance: jax.Array | None = None,
               trunk: str = "joint") -> dict[str, jax.Array]:
    """Runs both branches.

    Args:
      x: (B, H, W, C) batch of the conventional branch (and of both at inference).
      train: batch statistics (True) or running statistics (False) in batch norm.
      x_rebalance: optional batch of the re-balancing branch, same shape as x.
      trunk: with x_rebalance, "joint" (one trunk pass on both batches) or "separate"
        (one trunk pass per batch, x first; see the module docstring).

    Returns:
      dict with logits_c, logits_r (B, K), features_c, features_r (B, D), "logits" =
      (logits_c + logits_r) / 2 and "features" = features_c.
    """
    check_images(x)
    check_trunk(trunk)
    if x_rebalance is not None and x_rebalance.shape != x.shape:
      raise ValueError(f"x_rebalance must have the shape of x {x.shape}, got "
                       f"{x_rebalance.shape}.")
    trunk_specs, branch_specs = split_specs(self.specs, self.layout)
    backbone = Backbone(trunk_specs, self.block, self.stem, name="trunk")
    branch = functools.partial(PooledClassifier, self.num_classes, branch_specs, self.block,
                               head=self.head, first_stage=len(self.specs) - 1)
    branch_c, branch_r = branch(name="branch_c"), branch(name="branch_r")
    if x_rebalance is None:
      h = backbone(x, train)
      out_c, out_r = branch_c(h, train), branch_r(h, train)
    elif trunk == "separate":
      out_c = branch_c(backbone(x, train), train)
      out_r = branch_r(backbone(x_rebalance, train), train)
    else:
      h = backbone(jnp.concatenate([x, x_rebalance], axis=0), train)
      out_c, out_r = branch_c(h[:x.shape[0]], train), branch_r(h[x.shape[0]:], train)
    return {"logits": (out_c["logits"] + out_r["logits"]) / 2,
            "features": out_c["features"],
            "logits_c": out_c["logits"], "logits_r": out_r["logits"],
            "features_c": out_c["features"], "features_r": out_r["features"]}


def dual_resnet32(num_classes: int, layout: str = "stage", head: str = "linear"
                  ) -> DualBranchNet:
  """Dual-branch ResNet-32 (DBN-Mix CIFAR model with layout="stage", BBN with "block")."""
  heads.check_head(head)
  check_layout(layout)
  return DualBranchNet(num_classes, layout=layout, head=head)


def dual_small_cnn(num_classes: int, layout: str = "stage", head: str = "linear",
                   widths: tuple[int, ...] = (16, 32)) -> DualBranchNet:
  """Dual-branch SmallCNN for tests and quickstarts (one block per stage, so both layouts
  coincide: the trunk is every stage but the last)."""
  heads.check_head(head)
  specs = small_cnn_specs(tuple(widths))
  if len(specs) < 2:
    raise ValueError(f"dual_small_cnn needs at least two widths, got {tuple(widths)}.")
  check_layout(layout)
  return DualBranchNet(num_classes, layout=layout, head=head, specs=specs, block=ConvBNReLU,
                       stem=None)
