"""ESC-50 (Piczak 2015) read from its release folder: 2,000 five-second clips, 50 classes.

Layout (https://github.com/karolpiczak/ESC-50, the `ESC-50-master` folder of its archive):

    ESC-50-master/meta/esc50.csv   columns filename, fold, target, category, ...
    ESC-50-master/audio/*.wav      mono 16-bit PCM WAV, 44.1 kHz, 5 s

Each clip is read with the standard library's `wave` module (no audio package needed),
mixed to mono (the channel mean) if it has several channels, resampled to the model's
rate when the file's rate differs (`resample`), and its leading and trailing zero samples
are removed, as the BC-learning reference prepares ESC-50 (mil-tokyo/bc_learning_sound,
dataset_gen/esc_gen.py: `ffmpeg -ac 1 -ar {fs}`, then `sound[start: end + 1]` between the
first and last non-zero samples). Clips are returned as the rows of an int16 (N, T) array,
zero right-padded to the longest clip (`ltjax.audio` reads a clip's length from its last
non-zero sample).

Resampling (44.1 kHz -> 16 kHz for EnvNet): the reference converts with ffmpeg's default
resampler; `resample` is a windowed-sinc polyphase filter of the same kind (Kaiser window,
beta 9, 16 zero crossings on each side, cutoff 0.97 of the lower Nyquist frequency, each
phase normalised to unit DC gain), rounded to int16. It is not bit-identical to ffmpeg. To
train on ffmpeg's output instead, convert the files and point the loader at them (files at
the target rate are used as they are):

    mkdir -p ESC-50-16k/meta ESC-50-16k/audio && cp ESC-50-master/meta/esc50.csv ESC-50-16k/meta/
    for f in ESC-50-master/audio/*.wav; do
      ffmpeg -loglevel error -i "$f" -ac 1 -ar 16000 "ESC-50-16k/audio/$(basename "$f")"; done

The split (`split_by_fold`): LOBM sec. 4.1 holds out "8 examples per class" for validation;
ESC-50's folds hold exactly 8 clips of each class, and are built so that clips cut from
one source recording share a fold, so the held-out set is one fold (`val_fold`, default 1;
the BC-learning code validates on a fold too). The other 32 clips per class are the pool
the long-tailed training set is drawn from (`ltjax.data.make_longtail`, Pareto profile).
"""

from __future__ import annotations

import csv
import math
import pathlib
import wave
from typing import Sequence

import numpy as np

from ltjax.data._io import Arrays, DataError

CSV_PATH = ("meta", "esc50.csv")
AUDIO_DIR = "audio"
CSV_COLUMNS = ("filename", "fold", "target", "category")
ESC50_URL = "https://github.com/karolpiczak/ESC-50 (archive: ESC-50-master.zip)"
FOLDS = (1, 2, 3, 4, 5)


def is_esc50_folder(path: pathlib.Path) -> bool:
  """True when `path` holds meta/esc50.csv and an audio/ folder."""
  return path.joinpath(*CSV_PATH).is_file() and (path / AUDIO_DIR).is_dir()


def read_metadata(csv_path: pathlib.Path) -> tuple[list[tuple[str, int, int]], tuple[str, ...]]:
  """(filename, fold, target) of every row of esc50.csv, and the class names by target.

  Raises:
    DataError: a missing column, a non-integer fold / target, or a target without a name.
  """
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise DataError(f"{csv_path} lacks the columns {missing}; ESC-50's meta/esc50.csv has "
                      f"{', '.join(CSV_COLUMNS)}, ...")
    rows, names = [], {}
    for line, row in enumerate(reader, start=2):
      try:
        fold, target = int(row["fold"]), int(row["target"])
      except ValueError:
        raise DataError(f"{csv_path}, line {line}: fold and target must be integers, got "
                        f"{row['fold']!r} and {row['target']!r}.") from None
      rows.append((row["filename"], fold, target))
      names.setdefault(target, row["category"])
  if not rows:
    raise DataError(f"{csv_path} lists no clips.")
  num_classes = max(names) + 1
  if sorted(names) != list(range(num_classes)):
    raise DataError(f"{csv_path}: targets must be 0..K-1, got {sorted(names)}.")
  return rows, tuple(names[k] for k in range(num_classes))


def read_wav(path: pathlib.Path) -> tuple[np.ndarray, int]:
  """(int16 mono samples, sampling rate) of a 16-bit PCM WAV file (channels averaged).

  Raises:
    DataError: not a readable WAV file, or not 16-bit PCM.
  """
  try:
    with wave.open(str(path), "rb") as f:
      width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
      frames = f.readframes(f.getnframes())
  except (wave.Error, EOFError) as e:
    raise DataError(f"{path} is not a readable WAV file: {e}") from e
  if width != 2:
    raise DataError(f"{path}: ESC-50 clips are 16-bit PCM; this file has {8 * width}-bit "
                    "samples (convert it with ffmpeg -acodec pcm_s16le).")
  samples = np.frombuffer(frames, "<i2").reshape(-1, channels)
  if channels > 1:
    samples = np.rint(samples.mean(axis=1)).astype(np.int16)
  return samples.reshape(-1).astype(np.int16), rate


def _kaiser(u: np.ndarray, beta: float) -> np.ndarray:
  inside = np.abs(u) <= 1
  return np.where(inside, np.i0(beta * np.sqrt(np.clip(1 - u ** 2, 0, 1))) / np.i0(beta), 0.0)


def resample(x: np.ndarray, rate_in: int, rate_out: int, zero_crossings: int = 16,
             cutoff: float = 0.97, beta: float = 9.0) -> np.ndarray:
  """Windowed-sinc polyphase resampling of int16 samples (module docstring), on the host.

  Output sample n sits at input time t = n rate_in / rate_out and is
  sum_j x[j] h(j - t), h(tau) = f_c sinc(f_c tau) kaiser(tau / H), f_c = cutoff *
  min(1, rate_out / rate_in), H = zero_crossings / min(1, rate_out / rate_in); each of the
  rate_out / gcd phases is normalised to sum 1. ceil(len(x) rate_out / rate_in) outputs.

  Returns:
    int16 samples at `rate_out` (rounded, clipped); a copy of `x` when the rates agree.
  """
  x = np.asarray(x)
  if rate_in == rate_out:
    return x.astype(np.int16, copy=True)
  g = math.gcd(rate_in, rate_out)
  up, down = rate_out // g, rate_in // g
  ratio = min(1.0, up / down)
  fc, half = cutoff * ratio, zero_crossings / ratio
  taps = int(math.ceil(half))
  offsets = np.arange(-taps + 1, taps + 1)  # input samples base + j around t
  phases = np.arange(up)[:, None] / up
  tau = offsets[None, :] - phases
  table = fc * np.sinc(fc * tau) * _kaiser(tau / half, beta)
  table /= table.sum(axis=1, keepdims=True)
  n_out = -(-len(x) * up // down)
  padded = np.pad(x.astype(np.float64), (taps, taps + 1))
  out = np.empty(n_out, np.float64)
  for start in range(0, n_out, 16384):  # bounded memory per chunk
    n = np.arange(start, min(start + 16384, n_out))
    base, phase = (n * down) // up, (n * down) % up
    window = padded[base[:, None] + offsets[None, :] + taps]
    out[n] = np.einsum("nj,nj->n", window, table[phase])
  return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def trim_zeros(x: np.ndarray) -> np.ndarray:
  """The samples between the first and the last non-zero one (reference esc_gen.py)."""
  nonzero = np.flatnonzero(x)
  if nonzero.size == 0:
    return x[:0]
  return x[nonzero[0]:nonzero[-1] + 1]


def stack_clips(clips: Sequence[np.ndarray]) -> np.ndarray:
  """(N, max length) int16 array of the clips, zero right-padded."""
  width = max([len(c) for c in clips] + [1])
  out = np.zeros((len(clips), width), np.int16)
  for i, c in enumerate(clips):
    out[i, :len(c)] = c
  return out


def split_by_fold(folds: np.ndarray, val_fold: int) -> tuple[np.ndarray, np.ndarray]:
  """(training, validation) row indices: the validation set is fold `val_fold`."""
  if val_fold not in FOLDS:
    raise ValueError(f"val_fold must be one of ESC-50's folds {FOLDS}, got {val_fold}.")
  return np.flatnonzero(folds != val_fold), np.flatnonzero(folds == val_fold)


def load_esc50_arrays(root: pathlib.Path, sample_rate: int, val_fold: int = 1,
                      trim: bool = True) -> Arrays:
  """ESC-50's clips at `sample_rate`, split into the training pool and the validation fold.

  Args:
    root: the folder holding meta/esc50.csv and audio/.
    sample_rate: the model's rate (16000 EnvNet, 44100 EnvNet-v2).
    val_fold: the held-out fold (8 clips per class).
    trim: remove leading / trailing zero samples (the reference's preparation).

  Returns:
    train_images / test_images (N, T) int16, train_labels / test_labels int32,
    class_names, train_folds (the folds of the training rows).

  Raises:
    FileNotFoundError: an audio file the CSV names is missing.
    DataError: an unreadable or non-16-bit file, or a bad CSV.
  """
  rows, class_names = read_metadata(root.joinpath(*CSV_PATH))
  clips = []
  for name, _, _ in rows:
    path = root / AUDIO_DIR / name
    if not path.is_file():
      raise FileNotFoundError(f"{path} is listed in {root.joinpath(*CSV_PATH)} but missing; "
                              f"the ESC-50 folder needs every clip in {AUDIO_DIR}/ ({ESC50_URL}).")
    samples, rate = read_wav(path)
    samples = resample(samples, rate, sample_rate)
    clips.append(trim_zeros(samples) if trim else samples)
  folds = np.array([f for _, f, _ in rows], np.int64)
  labels = np.array([t for _, _, t in rows], np.int32)
  train, val = split_by_fold(folds, val_fold)
  return dict(train_images=stack_clips([clips[i] for i in train]), train_labels=labels[train],
              test_images=stack_clips([clips[i] for i in val]), test_labels=labels[val],
              class_names=np.array(class_names), train_folds=folds[train])
