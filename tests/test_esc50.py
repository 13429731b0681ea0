"""ESC-50-LT, BC learning and EnvNet: each piece against an independent transcription.

References are written here from the formulas of Tokozume et al. 2018 (BC learning) and of
its code's README-level description (mil-tokyo/bc_learning_sound utils.py: A-weighted
gain, mix; dataset.py: padding, crops), in float64 numpy, never from ltjax's output.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esc50_fixtures import write_esc50, write_wav
from ltjax import audio, label_rules, longtail
from ltjax.data import DataError, esc50, get_dataset
from ltjax.methods import mixup
from ltjax.models import envnet, get_model

# ----------------------------------------------------------------- references (float64)


def ref_a_weight_db(freq: np.ndarray, min_db: float = -80.0) -> np.ndarray:
  """A(f) = 20 log10(R(f)) + 2, R = 12194^2 f^4 / ((f^2 + 20.6^2) sqrt((f^2 + 107.7^2)
  (f^2 + 737.9^2)) (f^2 + 12194^2)), f = 1 Hz at DC, floored at min_db."""
  f = np.where(freq == 0, 1.0, freq).astype(np.float64)
  r = (12194.0 ** 2 * f ** 4) / ((f ** 2 + 20.6 ** 2)
                                 * np.sqrt((f ** 2 + 107.7 ** 2) * (f ** 2 + 737.9 ** 2))
                                 * (f ** 2 + 12194.0 ** 2))
  return np.maximum(20 * np.log10(r) + 2.0, min_db)


def ref_gain_db(x: np.ndarray, rate: int) -> float:
  n_fft = {16000: 2048, 44100: 4096}[rate]
  freqs = np.arange(n_fft // 2 + 1) * (rate // 2) / (n_fft // 2)
  weight = 10 ** (ref_a_weight_db(freqs) / 10)
  window = np.hanning(n_fft + 1)[:-1]
  gains = []
  for start in range(0, len(x) - n_fft + 1, n_fft // 2):
    spec = np.fft.rfft(window * x[start:start + n_fft].astype(np.float64))
    gains.append(10 * np.log10(max(np.sum(np.abs(spec) ** 2 * weight), 1e-8)))
  return max(gains)


def ref_padded(clip: np.ndarray, length: int) -> np.ndarray:
  return np.pad(clip, length // 2)


def ref_multi_crop(clip: np.ndarray, length: int, n_crops: int) -> np.ndarray:
  padded = ref_padded(clip, length)
  stride = (len(padded) - length) // (n_crops - 1)
  return np.stack([padded[stride * i:stride * i + length] for i in range(n_crops)])


def signal(rng, length, scale=0.2):
  t = np.arange(length) / 16000
  return (scale * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(length))


# ------------------------------------------------------------------- gain, A-weighting

@pytest.mark.parametrize("rate,n_fft", [(16000, 2048), (44100, 4096)])
def test_a_weighting_matches_the_formula(rate, n_fft):
  freqs = np.linspace(0, rate // 2, n_fft // 2 + 1)
  np.testing.assert_allclose(audio.a_weighting(rate, n_fft), ref_a_weight_db(freqs),
                             atol=1e-9)
  assert abs(ref_a_weight_db(np.array([1000.0]))[0]) < 0.01  # A(1 kHz) = 0 dB
  assert audio.a_weighting(rate, n_fft)[0] == -80.0  # DC floored


@pytest.mark.parametrize("rate,length", [(16000, 24014), (44100, 8000)])
def test_gain_matches_a_numpy_transcription(rate, length):
  rng = np.random.default_rng(0)
  x = np.stack([signal(rng, length), 0.01 * signal(rng, length), np.zeros(length)])
  got = np.asarray(audio.gain_db(x.astype(np.float32), rate))
  want = np.array([ref_gain_db(row, rate) for row in x])
  np.testing.assert_allclose(got, want, atol=2e-3)
  assert want[2] == -80.0 and abs((want[0] - want[1]) - 40.0) < 0.5  # x0.01 = -40 dB


def test_gain_needs_one_frame_and_a_known_rate():
  with pytest.raises(ValueError, match="2048"):
    audio.gain_db(np.zeros((1, 100), np.float32), 16000)
  with pytest.raises(ValueError, match="sampling rates"):
    audio.gain_db(np.zeros((1, 5000), np.float32), 22050)


# ---------------------------------------------------------------------------- BC mix

def test_bc_mix_closed_form():
  rng = np.random.default_rng(1)
  a = signal(rng, 4096)[None].astype(np.float32)
  r = np.float32(0.3)
  # Equal gains (-a has a's power spectrum): p = r, x = (r a + (1 - r) b) / sqrt(...).
  b = -a
  want = (r * a + (1 - r) * b) / np.sqrt(r ** 2 + (1 - r) ** 2)
  np.testing.assert_allclose(audio.bc_mix(a, b, r, 16000), want, atol=1e-6)
  # b 20 dB louder: p = 1 / (1 + 10^(-20 / 20) (1 - r) / r).
  b = 10 * signal(rng, 4096)[None].astype(np.float32)
  g_a, g_b = ref_gain_db(a[0], 16000), ref_gain_db(b[0], 16000)
  p = 1 / (1 + 10 ** ((g_a - g_b) / 20) * (1 - r) / r)
  want = (p * a + (1 - p) * b) / np.sqrt(p ** 2 + (1 - p) ** 2)
  np.testing.assert_allclose(audio.bc_mix(a, b, r, 16000), want, rtol=1e-4, atol=1e-5)
  assert p > r  # the quieter clip gets the larger coefficient
  assert float(audio.bc_ratio(0.0, 3.0, 1.0)) == 0.0  # r = 0 is well defined


def test_bc_in_mix_batch_labels_use_r():
  rng = np.random.default_rng(2)
  x_a = jnp.asarray(np.stack([signal(rng, 4096) for _ in range(4)]), jnp.float32)
  x_b = jnp.asarray(np.stack([3 * signal(rng, 4096) for _ in range(4)]), jnp.float32)
  ya, yb, counts = jnp.array([0, 1, 2, 3]), jnp.array([1, 2, 3, 0]), jnp.array([9, 5, 3, 1])
  key = jax.random.key(0)
  mixed = mixup.mix_batch(key, x_a, ya, x_b, yb, counts, alpha=1.0, rule=label_rules.vanilla,
                          per_sample=True, input_mix="bc", sample_rate=16000)
  r = mixed.lam
  assert r.shape == (4,)
  np.testing.assert_array_equal(mixed.labels.lam, r)  # the label keeps r, not p
  np.testing.assert_allclose(mixed.x, audio.bc_mix(x_a, x_b, r, 16000), atol=1e-6)
  linear = mixup.mix_batch(key, x_a, ya, x_b, yb, counts, alpha=1.0, rule=label_rules.vanilla,
                           per_sample=True)
  np.testing.assert_array_equal(linear.lam, r)  # the same draw; only the input rule differs
  assert not np.allclose(linear.x, mixed.x)
  with pytest.raises(ValueError, match="input_mix"):
    mixup.Mixup(input_mix="cutmix")
  with pytest.raises(ValueError, match="sample_rate"):
    mixup.Mixup(input_mix="bc", sample_rate=8000)


# ---------------------------------------------------------------- crops and lengths

def _clips(lengths, width, seed=3):
  rng = np.random.default_rng(seed)
  out = np.zeros((len(lengths), width), np.int16)
  for i, n in enumerate(lengths):
    out[i, :n] = rng.integers(1, 1000, n)
  return out


def test_random_crop_is_a_window_of_the_padded_clip():
  length, lengths = 64, [100, 64, 30, 1]
  clips = _clips(lengths, 120)
  np.testing.assert_array_equal(audio.clip_lengths(clips), lengths)
  offsets = {i: set() for i in range(len(lengths))}
  for s in range(40):
    crops = np.asarray(audio.random_crop(jax.random.key(s), clips, length))
    assert crops.shape == (4, length) and crops.dtype == np.int16
    for i, n in enumerate(lengths):
      padded = ref_padded(clips[i, :n], length)
      hits = [o for o in range(len(padded) - length + 1)
              if np.array_equal(padded[o:o + length], crops[i])]
      assert hits, (i, n)
      offsets[i].update(hits)
  assert len(offsets[0]) > 10  # offsets vary over 0..n


def test_multi_crop_matches_the_reference_positions():
  length, lengths = 50, [200, 91, 50]
  clips = _clips(lengths, 230)
  crops = np.asarray(audio.multi_crop(clips, length, 10))
  assert crops.shape == (3, 10, length)
  for i, n in enumerate(lengths):
    np.testing.assert_array_equal(crops[i], ref_multi_crop(clips[i, :n], length, 10))


def test_waveform_input_scales_crops_and_cuts_whole_clips():
  fn = audio.WaveformInput(50, 10)
  crops = np.full((2, 50), 16384, np.int16)
  np.testing.assert_allclose(fn(crops), 0.5)
  clips = _clips([200, 91], 230)
  out = np.asarray(fn(clips))
  assert out.shape == (2, 10, 50)
  np.testing.assert_allclose(out[1], ref_multi_crop(clips[1, :91], 50, 10) / 32768.0)


def test_average_crops_is_the_log_mean_softmax():
  z = np.random.default_rng(4).normal(size=(3, 10, 5))
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  np.testing.assert_allclose(audio.average_crops(z), np.log(p.mean(1)), atol=1e-5)


def test_envnet_averages_the_softmax_over_crops():
  model = envnet.envnet(5, widths=(4, 8, 4, 4), hidden=(8, 8))
  x = jax.random.normal(jax.random.key(0), (2, 3, 4000)) * 0.1
  variables = model.init(jax.random.key(1), x, train=False)
  whole = model.apply(variables, x, train=False)["logits"]
  per_crop = np.stack([np.asarray(model.apply(variables, x[:, c], train=False)["logits"])
                       for c in range(3)], axis=1)
  p = np.exp(per_crop) / np.exp(per_crop).sum(-1, keepdims=True)
  np.testing.assert_allclose(whole, np.log(p.mean(1)), atol=1e-5)


# ------------------------------------------------------------------------- EnvNet

def conv_params(layers, c_in=1):
  total = 0
  for c_out, (kh, kw) in layers:
    total += kh * kw * c_in * c_out + 2 * c_out  # bias-free conv, BN scale and offset
    c_in = c_out
  return total


def dense_params(sizes):
  return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


# The layer lists of the module docstring / the reference (models/envnet.py, envnetv2.py).
ENVNET_CONVS = [(40, (1, 8)), (40, (1, 8))], [(50, (8, 13)), (50, (1, 5))]
ENVNET_V2_CONVS = ([(32, (1, 64)), (64, (1, 16))],
                   [(32, (8, 8)), (32, (8, 8)), (64, (1, 4)), (64, (1, 4)), (128, (1, 2)),
                    (128, (1, 2)), (256, (1, 2)), (256, (1, 2))])


@pytest.mark.parametrize("name,length,flat,convs", [
    ("envnet", 24014, 50 * 11 * 14, ENVNET_CONVS),
    ("envnetv2", 66650, 256 * 10 * 8, ENVNET_V2_CONVS)])
def test_envnet_layers_flattened_size_and_parameters(name, length, flat, convs):
  model = get_model(name, 50)
  x = jnp.zeros((2, length))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  params = variables["params"]
  assert params["fc0"]["kernel"].shape == (flat, 4096)  # 7,700 / 20,480
  assert params["fc1"]["kernel"].shape == (4096, 4096)
  assert params["head"]["fc"]["kernel"].shape == (4096, 50)
  front, back = convs
  want = conv_params(front) + conv_params(back) + dense_params([flat, 4096, 4096, 50])
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == want
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out["logits"].shape == (2, 50) and out["features"].shape == (2, 4096)


def test_envnet_dropout_uses_the_dropout_rng():
  model = envnet.envnet(3, widths=(4, 8, 4, 4), hidden=(16, 16))
  x = jax.random.normal(jax.random.key(0), (4, 4000)) * 0.1
  variables = model.init(jax.random.key(1), x, train=False)
  run = lambda k: model.apply(variables, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(k)})[0]["logits"]
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(run(2), run(2))
  with pytest.raises(ValueError, match="widths"):
    envnet.envnet(3, widths=(4, 4))


# ---------------------------------------------------------------------- ESC-50-LT

def test_pareto_counts():
  a = math.log(10) / math.log(50)
  want = np.floor(32 * np.arange(1, 51) ** -a + 1e-9).astype(int)
  got = longtail.pareto_counts(32, 50, 10.0)
  np.testing.assert_array_equal(got, want)
  assert (got[0], got[-1]) == (32, 3) and np.all(np.diff(got) <= 0)
  np.testing.assert_array_equal(longtail.longtail_counts("pareto", 32, 50, 10.0), got)


def test_esc50_lt_split_counts_and_clips(tmp_path):
  info = write_esc50(tmp_path / "ESC-50-master")
  ds = get_dataset("esc50_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache", seed=1)
  assert ds.meta["kind"] == "waveform" and ds.meta["profile"] == "pareto"
  assert ds.meta["rho"] == 10.0 and ds.meta["val_fold"] == 1
  assert ds.class_names == tuple(f"class{k:02d}" for k in range(50))
  np.testing.assert_array_equal(ds.test_counts, [8] * 50)  # one fold: 8 per class
  np.testing.assert_array_equal(ds.train_counts, longtail.pareto_counts(32, 50, 10.0))
  assert ds.meta["original_counts"] == [32] * 50
  assert ds.train_images.dtype == np.int16 and ds.train_images.ndim == 2
  # Every clip is trimmed: it starts with its code 1000 + label and ends with it.
  for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
    lengths = np.asarray(audio.clip_lengths(images))
    np.testing.assert_array_equal(images[:, 0], 1000 + labels)
    np.testing.assert_array_equal(images[np.arange(len(labels)), lengths - 1], 1000 + labels)
    assert set(lengths) <= {n for _, _, n in info.values()}
  again = get_dataset("esc50_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache", seed=1)
  assert again.meta["cache_hit"]
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  other = get_dataset("esc50_lt", data_dir=tmp_path / "ESC-50-master", use_cache=False,
                      val_fold=3, rho=4.0, seed=1)
  np.testing.assert_array_equal(other.test_counts, [8] * 50)
  np.testing.assert_array_equal(other.train_counts, longtail.pareto_counts(32, 50, 4.0))


def test_esc50_errors_name_what_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"meta/esc50\.csv.*audio/"):
    get_dataset("esc50_lt", data_dir=tmp_path)
  root = tmp_path / "esc"
  write_esc50(root, num_classes=2, length=50)
  next((root / "audio").iterdir()).unlink()
  with pytest.raises(FileNotFoundError, match="missing"):
    get_dataset("esc50_lt", data_dir=root, use_cache=False)
  with pytest.raises(ValueError, match="val_fold"):
    get_dataset("esc50_lt", data_dir=root, val_fold=6, use_cache=False)
  (root / "meta" / "esc50.csv").write_text("name,fold\nx.wav,1\n")
  with pytest.raises(DataError, match="columns"):
    get_dataset("esc50_lt", data_dir=root, use_cache=False)


def test_wav_reader_and_resampler(tmp_path):
  stereo = np.array([[100, 300], [-50, -150], [7, 8]], "<i2")
  write_wav(tmp_path / "s.wav", stereo, 44100, channels=2)
  samples, rate = esc50.read_wav(tmp_path / "s.wav")
  assert rate == 44100
  np.testing.assert_array_equal(samples, [200, -100, 8])  # channel mean (7.5 -> 8)
  write_wav(tmp_path / "u8.wav", np.array([1, 2, 3], np.uint8), 8000, width=1)
  with pytest.raises(DataError, match="16-bit"):
    esc50.read_wav(tmp_path / "u8.wav")
  # A 1 kHz tone at 44.1 kHz resampled to 16 kHz is the 1 kHz tone at 16 kHz.
  n = 44100
  tone = np.rint(10000 * np.sin(2 * np.pi * 1000 * np.arange(n) / 44100)).astype(np.int16)
  out = esc50.resample(tone, 44100, 16000)
  assert out.dtype == np.int16 and len(out) == -(-n * 160 // 441)
  want = 10000 * np.sin(2 * np.pi * 1000 * np.arange(len(out)) / 16000)
  inner = slice(100, -100)
  assert np.max(np.abs(out[inner] - want[inner])) < 0.01 * 10000
  # A 10 kHz tone (above the 8 kHz Nyquist frequency of 16 kHz) is filtered out.
  high = np.rint(10000 * np.sin(2 * np.pi * 10000 * np.arange(n) / 44100)).astype(np.int16)
  assert np.max(np.abs(esc50.resample(high, 44100, 16000)[inner])) < 0.01 * 10000
  np.testing.assert_array_equal(esc50.resample(tone, 16000, 16000), tone)
