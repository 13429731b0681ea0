"""Raw-waveform input and between-class (BC) mixing for sound recognition (jit-safe).

The sound benchmark of LOBM (Zhang et al. 2023, sec. 4: ESC-50-LT with EnvNet / EnvNet-v2,
"mixup is replaced by between-class (BC) learning [2]") trains on raw waveforms as
Tokozume et al. do (BC learning, ICLR 2018; reference code mil-tokyo/bc_learning_sound,
`dataset.py`, `utils.py`, `train.py`):

- Training input (`random_crop`, then `WaveformInput`): the clip padded with L // 2 zeros
  on both sides, a crop of L samples at an offset uniform in {0, ..., n + 2 (L // 2) - L}
  (n the clip's length), scaled by 1 / 32768 (16-bit PCM to [-1, 1)).
- Test input (`multi_crop`, inside `WaveformInput` for whole clips): the padded clip cut
  into `n_crops` = 10 crops of L samples at offsets i * s, s = (n + 2 (L // 2) - L) //
  (n_crops - 1); the model averages the softmax over the crops (`average_crops`).
- Gain (sound pressure level) of a crop (`gain_db`): frames of n_fft samples (2048 at
  16 kHz, 4096 at 44.1 kHz) with stride n_fft // 2; per frame the A-weighted power
  g = sum_f |rfft(w * frame)|_f^2 10^(A(f) / 10), w the periodic Hann window; in dB,
  10 log10(max(g, 10^(min_db / 10))) with min_db = -80; the gain is the max over frames.
  A(f) (`a_weighting`, the IEC 61672 A-weighting curve, +2.0 dB so that A(1 kHz) = 0):
  A(f) = 20 log10(R(f)) + 2.0, R(f) = 12194^2 f^4 / ((f^2 + 20.6^2)
  sqrt((f^2 + 107.7^2)(f^2 + 737.9^2)) (f^2 + 12194^2)), clamped below at min_db; the
  reference evaluates the DC bin at f^2 = 1.
- BC mix (`bc_mix`, BC paper eq. 2 / `utils.mix`): r ~ U(0, 1) per example,
  p = 1 / (1 + 10^((G1 - G2) / 20) (1 - r) / r), x = (p s1 + (1 - p) s2) / sqrt(p^2 +
  (1 - p)^2); the label is r y1 + (1 - r) y2 (r, not p). p makes the perceived share of
  s1 equal to r when the gains differ; the denominator keeps the mixed clip's energy.

How a clip's length is known on the device: clips are stored as the rows of an int16
(N, T) array, right-padded with zeros; the clip ends at its last non-zero sample
(`clip_lengths`). The ESC-50 loader trims leading and trailing zero samples as the
reference's `esc_gen.py` does, so this is the clip's exact length there.

Everything here is a pure function of its arguments (keys explicit), vectorised over the
batch and jit-safe, except `a_weighting` and `hann_window`, which build static numpy
constants.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

PCM_SCALE = 32768.0  # 16-bit PCM full scale (reference: U.normalize(32768.0))
MIN_DB = -80.0  # floor of the A-weights and of the frame gains (reference min_db)
N_FFT = {16000: 2048, 44100: 4096}  # frame length of the gain per sampling rate (reference)
N_CROPS = 10  # test crops per clip (reference opts.py --nCrops)


def a_weighting(sample_rate: int, n_fft: int, min_db: float = MIN_DB) -> np.ndarray:
  """A-weighting in dB at the rfft bins of an n_fft frame: (n_fft // 2 + 1,) float64.

  Bins f_k = k (sample_rate // 2) / (n_fft // 2) (numpy `linspace(0, fs // 2, n_fft // 2
  + 1)`, as the reference); A(f) = 20 log10(R(f)) + 2.0 with R of the module docstring,
  evaluated at f^2 = 1 for the DC bin, clamped below at `min_db`.
  """
  freq_sq = np.linspace(0, sample_rate // 2, n_fft // 2 + 1) ** 2
  freq_sq[0] = 1.0
  weight = 2.0 + 20.0 * (2 * np.log10(12194.0) + 2 * np.log10(freq_sq)
                         - np.log10(freq_sq + 12194.0 ** 2)
                         - np.log10(freq_sq + 20.6 ** 2)
                         - 0.5 * np.log10(freq_sq + 107.7 ** 2)
                         - 0.5 * np.log10(freq_sq + 737.9 ** 2))
  return np.maximum(weight, min_db)


def hann_window(n: int) -> np.ndarray:
  """Periodic Hann window 0.5 - 0.5 cos(2 pi k / n), k < n (`np.hanning(n + 1)[:-1]`)."""
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def frame_gains_db(x: ArrayLike, sample_rate: int, min_db: float = MIN_DB) -> jax.Array:
  """A-weighted gain in dB of every frame of each waveform (module docstring).

  Args:
    x: (..., L) waveforms in [-1, 1) (after the 1 / 32768 scaling), L >= n_fft.
    sample_rate: 16000 or 44100 (static): n_fft = 2048 or 4096, stride n_fft // 2.
    min_db: floor of the A-weights and of the gains.

  Returns:
    (..., F) float32 gains, F = (L - n_fft) // (n_fft // 2) + 1.

  Raises:
    ValueError: another sampling rate, or waveforms shorter than one frame.
  """
  if sample_rate not in N_FFT:
    raise ValueError(f"The BC gain is defined for sampling rates {sorted(N_FFT)} (n_fft "
                     f"2048 / 4096, Tokozume et al.), got {sample_rate}.")
  n_fft = N_FFT[sample_rate]
  x = jnp.asarray(x, jnp.float32)
  length = x.shape[-1]
  if length < n_fft:
    raise ValueError(f"the gain needs waveforms of at least n_fft = {n_fft} samples at "
                     f"{sample_rate} Hz, got {length}.")
  stride = n_fft // 2
  starts = np.arange(0, length - n_fft + 1, stride)
  frames = x[..., starts[:, None] + np.arange(n_fft)[None, :]]  # (..., F, n_fft)
  power = jnp.abs(jnp.fft.rfft(frames * hann_window(n_fft).astype(np.float32))) ** 2
  weights = (10.0 ** (a_weighting(sample_rate, n_fft, min_db) / 10)).astype(np.float32)
  gains = jnp.sum(power * weights, axis=-1)
  return 10.0 * jnp.log10(jnp.maximum(gains, 10.0 ** (min_db / 10)))


def gain_db(x: ArrayLike, sample_rate: int, min_db: float = MIN_DB) -> jax.Array:
  """Sound pressure level of each waveform: the max over frames of `frame_gains_db`.

  Args:
    x: (..., L) waveforms in [-1, 1).
    sample_rate: 16000 or 44100 (static).
    min_db: floor (-80 dB).

  Returns:
    (...,) float32 gains in dB.
  """
  return jnp.max(frame_gains_db(x, sample_rate, min_db), axis=-1)


def bc_ratio(r: ArrayLike, gain_a: ArrayLike, gain_b: ArrayLike) -> jax.Array:
  """BC's input coefficient p = 1 / (1 + 10^((G_a - G_b) / 20) (1 - r) / r).

  Written as r / (r + 10^((G_a - G_b) / 20) (1 - r)), which is the same for r in (0, 1)
  and gives p = 0 at r = 0 (a draw of exactly 0) instead of a division by zero.
  """
  r = jnp.asarray(r, jnp.float32)
  ratio = 10.0 ** ((jnp.asarray(gain_a, jnp.float32) - jnp.asarray(gain_b, jnp.float32)) / 20)
  return r / (r + ratio * (1 - r))


def bc_mix(x_a: ArrayLike, x_b: ArrayLike, r: ArrayLike, sample_rate: int,
           min_db: float = MIN_DB) -> jax.Array:
  """Between-class mix of two aligned batches of waveforms (Tokozume et al. 2018, eq. 2).

  x = (p x_a + (1 - p) x_b) / sqrt(p^2 + (1 - p)^2), p = `bc_ratio(r, G_a, G_b)` with
  G = `gain_db` of each waveform. With equal gains p = r. The label of the mix is
  r y_a + (1 - r) y_b (the caller's label rule with lam = r).

  Args:
    x_a, x_b: (B, L) waveforms in [-1, 1) (scaled training crops).
    r: scalar or (B,) mixing ratios in [0, 1] (the reference draws one per example).
    sample_rate: 16000 or 44100 (static; sets the gain's frame length).
    min_db: gain floor.

  Returns:
    (B, L) float32 mixed waveforms.
  """
  x_a, x_b = jnp.asarray(x_a, jnp.float32), jnp.asarray(x_b, jnp.float32)
  if x_a.shape != x_b.shape or x_a.ndim != 2:
    raise ValueError(f"x_a and x_b must be (B, L) waveforms of one shape, got {x_a.shape} "
                     f"and {x_b.shape}.")
  p = bc_ratio(r, gain_db(x_a, sample_rate, min_db), gain_db(x_b, sample_rate, min_db))
  p = jnp.broadcast_to(p, x_a.shape[:1])[:, None]
  return (p * x_a + (1 - p) * x_b) / jnp.sqrt(p ** 2 + (1 - p) ** 2)


def clip_lengths(clips: ArrayLike) -> jax.Array:
  """(B,) int32 length of each clip of a right-zero-padded (B, T) array: the index after
  its last non-zero sample (0 for an all-zero row)."""
  clips = jnp.asarray(clips)
  nonzero = clips != 0
  last = clips.shape[-1] - jnp.argmax(nonzero[..., ::-1], axis=-1)
  return jnp.where(jnp.any(nonzero, axis=-1), last, 0).astype(jnp.int32)


def _padded(clips: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
  """Clips with length // 2 zeros on the left (and enough on the right), and the length
  n + 2 (length // 2) of each padded clip."""
  half = length // 2
  extra = max(length - clips.shape[-1] - 2 * half, 0)  # a crop of a row shorter than L
  padded = jnp.pad(clips, ((0, 0), (half, half + extra)))
  return padded, clip_lengths(clips) + 2 * half


def _check_clips(clips: jax.Array, length: int) -> None:
  if clips.ndim != 2:
    raise ValueError(f"clips must be a (B, T) array of waveforms, got shape {clips.shape}.")
  if int(length) != length or length < 1:
    raise ValueError(f"the crop length must be a positive integer, got {length}.")


def _crops(padded: jax.Array, starts: jax.Array, length: int) -> jax.Array:
  """(B, C, length) windows of `padded` (B, P) at `starts` (B, C)."""
  take = lambda row, s: jax.lax.dynamic_slice(row, (s,), (length,))
  return jax.vmap(lambda row, ss: jax.vmap(lambda s: take(row, s))(ss))(padded, starts)


def random_crop(key: jax.Array, clips: ArrayLike, length: int) -> jax.Array:
  """Training crop of each clip: L = `length` samples of the zero-padded clip.

  out_b = pad(clip_b, L // 2)[o_b : o_b + L], o_b ~ U{0, ..., n_b + 2 (L // 2) - L}
  (reference `U.padding(L // 2)`, `U.random_crop(L)`), n_b = `clip_lengths`.

  Args:
    key: PRNG key.
    clips: (B, T) waveforms (int16 PCM in practice; the dtype is kept), zero right-padded.
    length: L (static).

  Returns:
    (B, L) crops, same dtype as `clips`.
  """
  clips = jnp.asarray(clips)
  _check_clips(clips, length)
  padded, total = _padded(clips, length)
  starts = jax.random.randint(key, total.shape, 0, jnp.maximum(total - length, 0) + 1)
  return _crops(padded, starts[:, None], length)[:, 0]


def multi_crop(clips: ArrayLike, length: int, n_crops: int = N_CROPS) -> jax.Array:
  """Test crops of each clip: `n_crops` windows of L samples, evenly spaced.

  Crop i of clip b is pad(clip_b, L // 2)[i s_b : i s_b + L] with s_b = (n_b + 2 (L // 2)
  - L) // (n_crops - 1) (reference `U.multi_crop`); one crop at offset 0 when n_crops = 1.

  Args:
    clips: (B, T) waveforms, zero right-padded.
    length: L (static).
    n_crops: crops per clip (static, >= 1).

  Returns:
    (B, n_crops, L) crops, same dtype as `clips`.
  """
  clips = jnp.asarray(clips)
  _check_clips(clips, length)
  if int(n_crops) != n_crops or n_crops < 1:
    raise ValueError(f"n_crops must be a positive integer, got {n_crops}.")
  padded, total = _padded(clips, length)
  stride = jnp.maximum(total - length, 0) // max(n_crops - 1, 1)
  starts = stride[:, None] * jnp.arange(n_crops)[None, :]
  return _crops(padded, starts, length)


def average_crops(logits: ArrayLike) -> jax.Array:
  """(B, K) log of the mean softmax over crops of (B, C, K) logits (reference `val`:
  `F.mean(F.softmax(y), axis=1)`); its argmax / top-5 are those of the mean softmax."""
  logits = jnp.asarray(logits, jnp.float32)
  return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=1) - jnp.log(
      logits.shape[1])


@flax.struct.dataclass
class WaveformInput:
  """The `normalize_fn` of waveform datasets: PCM to network input, crops for whole clips.

  - A (B, L) batch of training crops (`random_crop`'s output, L = `length`): x / 32768.
  - A (B, T) batch of whole clips, T != L (evaluation, `EvalFn`, and the engine's model
    initialisation on `data.images[:1]`): `multi_crop` into (B, n_crops, L), / 32768. Models
    for waveforms (`ltjax.models.envnet`) take such a stack and average their softmax over
    the crops (`average_crops`).

  A dataset whose clip array is exactly L samples wide would be ambiguous; the experiment
  runner refuses it.

  Attributes:
    length: L, the model's input length (24,014 EnvNet, 66,650 EnvNet-v2).
    n_crops: test crops per clip (10).
  """
  length: int = flax.struct.field(pytree_node=False)
  n_crops: int = flax.struct.field(pytree_node=False, default=N_CROPS)

  def __call__(self, clips: ArrayLike) -> jax.Array:
    clips = jnp.asarray(clips)
    if clips.ndim != 2:
      raise ValueError(f"waveform batches are (B, T) arrays, got shape {clips.shape}.")
    if clips.shape[-1] != self.length:
      clips = multi_crop(clips, self.length, self.n_crops)
    return clips.astype(jnp.float32) / PCM_SCALE
