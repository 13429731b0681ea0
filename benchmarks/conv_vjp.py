"""A 2-D NHWC convolution whose gradient convolutions XLA:CPU runs fast inside a while loop.

Why: XLA:CPU runs a convolution with its fast kernels (XNNPACK/YNNPACK or Eigen) only when
its dimension numbers are canonical, input NHWC, kernel HWIO, output NHWC
(`PotentiallyImplementedAsEigenConvolution`); the `ConvCanonicalization` pass that
transposes every other convolution into that form visits the entry computation only
(`module->entry_computation()` in xla/service/cpu/conv_canonicalization.cc). JAX's
transposition rules write a convolution's gradients as non-canonical convolutions (the input
gradient with an `01oi` kernel, the kernel gradient as `f01b_i01o->01bf`), so in a step
jitted alone they are canonicalised, and inside `lax.scan` / `fori_loop` (a while body, not
the entry computation) they stay as they are and are emitted as naive loops, 10-20x slower.

`conv_general_dilated` below computes the same forward and gradients with a `custom_vjp`
whose backward pass is written directly in canonical form: the input gradient is the
canonical convolution of dy with the flipped, in/out-swapped kernel (lhs dilation = stride),
the kernel gradient the canonical convolution of x^T (channels as batch, images as features)
with dy^T (an (OH, OW, N, O) kernel, rhs dilation = stride). These are the convolutions
ConvCanonicalization would build, so a step jitted alone compiles to the same kernels.

This module is the proposed ltjax change demonstrated by benchmarks/scan_slowdown.py and
benchmarks/cpu_step.py: pass `conv_general_dilated=conv_vjp.conv_general_dilated` to the
`nn.Conv` of `ltjax.models.resnet_cifar.conv` (flax's `nn.Conv` takes it as a field).
`use_in_resnet_cifar()` does that here by replacing `resnet_cifar.conv` in this process.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
CANONICAL_LABELS = "b01f_01io->b01f"
Pads = tuple[tuple[int, int], ...]


def _dilated_sizes(out_hw: Sequence[int], strides: Sequence[int]) -> list[int]:
  """Spatial sizes of the output gradient with (stride - 1) zeros between its entries."""
  return [(o - 1) * s + 1 for o, s in zip(out_hw, strides)]


def input_gradient(dy: jax.Array, kernel: jax.Array, strides: tuple[int, ...], pads: Pads,
                   in_hw: Sequence[int]) -> jax.Array:
  """dL/dx of a canonical convolution, as one canonical convolution of `dy`."""
  k_hw = kernel.shape[:2]
  dilated = _dilated_sizes(dy.shape[1:3], strides)
  grad_pads = [(k - 1 - lo, size - d + lo)
               for k, (lo, _), size, d in zip(k_hw, pads, in_hw, dilated)]
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return lax.conv_general_dilated(dy, flipped, (1, 1), grad_pads, lhs_dilation=strides,
                                  dimension_numbers=DIMENSION_NUMBERS)


def kernel_gradient(x: jax.Array, dy: jax.Array, strides: tuple[int, ...], pads: Pads,
                    k_hw: Sequence[int]) -> jax.Array:
  """dL/dkernel (HWIO) of a canonical convolution, as one canonical convolution."""
  dilated = _dilated_sizes(dy.shape[1:3], strides)
  grad_pads = [(lo, k + d - 1 - size - lo)
               for k, (lo, _), size, d in zip(k_hw, pads, x.shape[1:3], dilated)]
  channels_as_batch = x.transpose(3, 1, 2, 0)  # (C, H, W, N)
  dy_as_kernel = dy.transpose(1, 2, 0, 3)  # (OH, OW, N, O)
  grad = lax.conv_general_dilated(channels_as_batch, dy_as_kernel, (1, 1), grad_pads,
                                  rhs_dilation=strides, dimension_numbers=DIMENSION_NUMBERS)
  return grad.transpose(1, 2, 0, 3)  # (C, KH, KW, O) -> (KH, KW, C, O)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], pads: Pads
           ) -> jax.Array:
  """`lax.conv_general_dilated(x, kernel, strides, pads)` in NHWC / HWIO / NHWC."""
  return lax.conv_general_dilated(x, kernel, strides, pads,
                                  dimension_numbers=DIMENSION_NUMBERS)


def _conv2d_fwd(x, kernel, strides, pads):
  return conv2d(x, kernel, strides, pads), (x, kernel)


def _conv2d_bwd(strides, pads, residuals, dy):
  x, kernel = residuals
  return (input_gradient(dy, kernel, strides, pads, x.shape[1:3]),
          kernel_gradient(x, dy, strides, pads, kernel.shape[:2]))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """Drop-in `lax.conv_general_dilated` for flax's `nn.Conv` (2-D, NHWC, no dilation).

  Raises:
    ValueError: for the cases it does not cover (dilation, groups, other layouts).
  """
  del dimension_numbers, precision, preferred_element_type  # nn.Conv passes NHWC layouts
  if lhs.ndim != 4 or any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                                       *(rhs_dilation or ()))):
    raise ValueError("conv_vjp covers 2-D NHWC convolutions without dilation; use "
                     "lax.conv_general_dilated for the others.")
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError("conv_vjp covers ungrouped convolutions (feature_group_count=1).")
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  return conv2d(lhs, rhs, strides, tuple((int(lo), int(hi)) for lo, hi in padding))


@contextlib.contextmanager
def use_in_resnet_cifar() -> Iterator[None]:
  """Builds ltjax's CIFAR ResNets with this convolution while the context is open.

  Replaces `ltjax.models.resnet_cifar.conv` (looked up when a block is called, i.e. when
  the model is initialised or traced) by the same `nn.Conv` with
  `conv_general_dilated=conv_general_dilated`: the ltjax change this file proposes.
  """
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  from ltjax.models import resnet_cifar  # pylint: disable=import-outside-toplevel
  original = resnet_cifar.conv

  def conv(features: int, kernel: int, strides: int, kernel_init: Any,
           name: str | None = None) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=((pad, pad), (pad, pad)), use_bias=False,
                   kernel_init=kernel_init, name=name,
                   conv_general_dilated=conv_general_dilated)

  resnet_cifar.conv = conv
  try:
    yield
  finally:
    resnet_cifar.conv = original


def non_canonical_convolutions(hlo_text: str) -> tuple[int, int]:
  """(non-canonical, all) convolution instructions in an optimised HLO module's text."""
  lines = [line for line in hlo_text.splitlines() if " convolution(" in line]
  return sum(f"dim_labels={CANONICAL_LABELS}" not in line for line in lines), len(lines)
