"""Generated ESC-50-like folders (meta/esc50.csv + audio/*.wav) for the sound tests."""

from __future__ import annotations

import csv
import pathlib
import wave

import numpy as np

CSV_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def write_wav(path: pathlib.Path, samples: np.ndarray, rate: int, channels: int = 1,
              width: int = 2) -> None:
  with wave.open(str(path), "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(np.ascontiguousarray(samples).tobytes())


def clip(label: int, index: int, length: int, rate: int, rng: np.random.Generator,
         lead: int = 0, tail: int = 0) -> np.ndarray:
  """A tone of class `label` plus noise, `lead` / `tail` zero samples around it; its first
  and last samples are the code 1000 + label (never zero)."""
  t = np.arange(length) / rate
  x = 3000 * np.sin(2 * np.pi * (200 + 150 * label) * t) + 300 * rng.standard_normal(length)
  x = np.clip(np.rint(x), -30000, 30000)
  x[x == 0] = 1
  x[0] = x[-1] = 1000 + label
  return np.concatenate([np.zeros(lead), x, np.zeros(tail)]).astype("<i2")


def write_esc50(root: pathlib.Path, num_classes: int = 50, clips_per_class: int = 40,
                rate: int = 16000, length: int = 300, seed: int = 0) -> dict:
  """An ESC-50-like folder: clip i of class k in fold i % 5 + 1 (8 per fold and class),
  every third clip with leading / trailing zeros. Returns {file name: (fold, label,
  length without the zeros)}."""
  root = pathlib.Path(root)
  (root / "meta").mkdir(parents=True, exist_ok=True)
  (root / "audio").mkdir(exist_ok=True)
  rng = np.random.default_rng(seed)
  rows, info = [], {}
  for k in range(num_classes):
    for i in range(clips_per_class):
      fold = i % 5 + 1
      name = f"{fold}-{k:03d}{i:03d}-A-{k}.wav"
      n = length + (i % 7)
      lead, tail = (3, 5) if i % 3 == 0 else (0, 0)
      write_wav(root / "audio" / name, clip(k, i, n, rate, rng, lead, tail), rate)
      rows.append([name, fold, k, f"class{k:02d}", False, 100 * k + i, "A"])
      info[name] = (fold, k, n)
  with open(root / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
  return info
