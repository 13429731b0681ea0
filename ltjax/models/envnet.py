"""EnvNet (Tokozume & Harada 2017) and EnvNet-v2 (Tokozume et al. 2018): raw-waveform CNNs.

Transcribed from the BC-learning reference code (mil-tokyo/bc_learning_sound,
models/envnet.py, models/envnetv2.py, models/convbnrelu.py), the backbones of LOBM's sound
benchmark (LOBM sec. 4.2, Table 2, ESC-50-LT). Each conv is bias-free, He-normal,
followed by BatchNorm (Chainer defaults: eps 2e-5, running averages with decay 0.9) and
ReLU; max pooling uses Chainer's `cover_all=True` (a last partial window is kept). The
waveform (B, L) enters as a 1 x L image with one channel; after the first pooling the
channel axis becomes the height axis ("swap"). Layers, as (out channels, kernel, stride):

EnvNet, 16 kHz, L = 24,014 (about 1.5 s):
  conv 40 (1, 8), conv 40 (1, 8), pool (1, 160), swap, conv 50 (8, 13), pool (3, 3),
  conv 50 (1, 5), pool (1, 3) -> 50 x 11 x 14 = 7,700; fc 4096, fc 4096, head.
EnvNet-v2, 44.1 kHz, L = 66,650 (about 1.5 s):
  conv 32 (1, 64) / 2, conv 64 (1, 16) / 2, pool (1, 64), swap, conv 32 (8, 8),
  conv 32 (8, 8), pool (5, 3), conv 64 (1, 4), conv 64 (1, 4), pool (1, 2),
  conv 128 (1, 2), conv 128 (1, 2), pool (1, 2), conv 256 (1, 2), conv 256 (1, 2),
  pool (1, 2) -> 256 x 10 x 8 = 20,480; fc 4096, fc 4096, head.

The two hidden fully connected layers are ReLU + dropout 0.5 (the training step passes a
dropout key through `ltjax.recipe.Forward`); Chainer's `L.Linear` default initialisation
(LeCun normal, std sqrt(1 / fan_in), zero bias). The last layer is an ltjax head
(`heads.head_outputs`: He-normal for "linear", where Chainer draws LeCun normal, a factor
sqrt(2) in the initial scale; "normalized" for LDAM). The flattened map is read in
Chainer's (C, H, W) order, so that weights of the reference could be copied in.

Parameters at K = 50: EnvNet 48.56 M (the fully connected layers hold all but 31 k),
EnvNet-v2 101.25 M.

Test time: a model called on (B, C, L), C crops per example (`ltjax.audio.WaveformInput`
makes them from whole clips), returns {"logits": log of the mean softmax over the crops
(`ltjax.audio.average_crops`), "features": the mean feature}, the reference's 10-crop
evaluation (train.py `val`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax import audio
from ltjax.models import heads

# (out channels, kernel (h, w), stride (h, w)) of a conv-BN-ReLU.
Conv = tuple[int, tuple[int, int], tuple[int, int]]
# A stage: its convs, then a max pooling window (stride = window).
Stage = tuple[tuple[Conv, ...], tuple[int, int]]

CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # Chainer HeNormal
DENSE_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # Chainer LeCunNormal
BN_EPSILON = 2e-5  # Chainer BatchNormalization default

ENVNET_STAGES: tuple[Stage, ...] = (
    (((40, (1, 8), (1, 1)), (40, (1, 8), (1, 1))), (1, 160)),
    (((50, (8, 13), (1, 1)),), (3, 3)),
    (((50, (1, 5), (1, 1)),), (1, 3)),
)
ENVNET_V2_STAGES: tuple[Stage, ...] = (
    (((32, (1, 64), (1, 2)), (64, (1, 16), (1, 2))), (1, 64)),
    (((32, (8, 8), (1, 1)), (32, (8, 8), (1, 1))), (5, 3)),
    (((64, (1, 4), (1, 1)), (64, (1, 4), (1, 1))), (1, 2)),
    (((128, (1, 2), (1, 1)), (128, (1, 2), (1, 1))), (1, 2)),
    (((256, (1, 2), (1, 1)), (256, (1, 2), (1, 1))), (1, 2)),
)
ENVNET_INPUT = (16000, 24014)  # (sampling rate, input length L), reference opts.py
ENVNET_V2_INPUT = (44100, 66650)


def max_pool_cover_all(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """Max pooling with stride = window and Chainer's `cover_all=True`: ceil((n - k) / k) + 1
  windows per axis (at least one), the last one padded with -inf."""
  pads = []
  for n, k in zip(x.shape[1:3], window):
    out = max(-(-(n - k) // k), 0) + 1
    pads.append((0, max((out - 1) * k + k - n, 0)))
  return nn.max_pool(x, window, strides=window, padding=pads)


def with_widths(stages: Sequence[Stage], widths: Sequence[int]) -> tuple[Stage, ...]:
  """`stages` with the conv output channels replaced by `widths`, in order (small test
  models)."""
  convs = [c for convs, _ in stages for c in convs]
  if len(widths) != len(convs):
    raise ValueError(f"widths must give the {len(convs)} conv widths, got {len(widths)}.")
  it = iter(widths)
  return tuple((tuple((int(next(it)), k, s) for _, k, s in convs), pool)
               for convs, pool in stages)


class EnvNetFamily(nn.Module):
  """Conv-BN-ReLU stages on a 1 x L waveform image, a swap after the first, two dropout
  fully connected layers and a head (module docstring).

  Attributes:
    num_classes: K.
    stages: the conv stages (ENVNET_STAGES, ENVNET_V2_STAGES).
    hidden: widths of the fully connected layers ((4096, 4096)).
    dropout: dropout rate after each of them (0.5).
    head: classifier head kind (`heads.HEADS`).
  """
  num_classes: int
  stages: tuple[Stage, ...]
  hidden: tuple[int, ...] = (4096, 4096)
  dropout: float = 0.5
  head: str = "linear"

  def trunk(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, L) waveforms -> (B, D) features (after the last hidden layer)."""
    h = x[:, None, :, None]  # (B, H=1, W=L, C=1)
    for s, (convs, pool) in enumerate(self.stages):
      for c, (features, kernel, strides) in enumerate(convs):
        h = nn.Conv(features, kernel, strides=strides, padding="VALID", use_bias=False,
                    kernel_init=CONV_INIT, name=f"stage{s}_conv{c}")(h)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                         name=f"stage{s}_bn{c}")(h)
        h = nn.relu(h)
      h = max_pool_cover_all(h, pool)
      if s == 0:
        h = jnp.transpose(h, (0, 3, 2, 1))  # channels become the height axis
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # Chainer's (C, H, W)
    for i, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, kernel_init=DENSE_INIT, name=f"fc{i}")(h))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """{"logits" (B, K), "features" (B, D)} of (B, L) waveforms, or of (B, C, L) crops
    (logits: log of the mean softmax over the C crops; features: their mean)."""
    if x.ndim not in (2, 3):
      raise ValueError(f"EnvNet takes (B, L) waveforms or (B, C, L) crops, got shape "
                       f"{x.shape}.")
    flat = x.reshape(-1, x.shape[-1])
    outputs = heads.head_outputs(self.trunk(flat, train), self.head, self.num_classes)
    if x.ndim == 2:
      return outputs
    batch, crops = x.shape[:2]
    return {"logits": audio.average_crops(outputs["logits"].reshape(batch, crops, -1)),
            "features": outputs["features"].reshape(batch, crops, -1).mean(axis=1)}


def _model(stages: tuple[Stage, ...], num_classes: int, head: str,
           widths: Sequence[int] | None, hidden: Sequence[int], dropout: float
           ) -> EnvNetFamily:
  heads.check_head(head)
  if widths is not None:
    stages = with_widths(stages, widths)
  return EnvNetFamily(num_classes, stages=stages, hidden=tuple(int(h) for h in hidden),
                      dropout=float(dropout), head=head)


def envnet(num_classes: int, head: str = "linear", widths: Sequence[int] | None = None,
           hidden: Sequence[int] = (4096, 4096), dropout: float = 0.5) -> EnvNetFamily:
  """EnvNet (16 kHz, L = 24,014); `widths` (4 conv widths) and `hidden` shrink it."""
  return _model(ENVNET_STAGES, num_classes, head, widths, hidden, dropout)


def envnet_v2(num_classes: int, head: str = "linear", widths: Sequence[int] | None = None,
              hidden: Sequence[int] = (4096, 4096), dropout: float = 0.5) -> EnvNetFamily:
  """EnvNet-v2 (44.1 kHz, L = 66,650); `widths` (10 conv widths) and `hidden` shrink it."""
  return _model(ENVNET_V2_STAGES, num_classes, head, widths, hidden, dropout)
