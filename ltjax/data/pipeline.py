"""A grain input pipeline for datasets too large for the device (ImageNet-LT, iNaturalist).

Pieces:

- `ImageFileSource` / `ArraySource`: random-access sources yielding
  {"image": uint8 (H, W, C), "label": int32, "index": int64 (position in the source)};
  files are decoded with Pillow in the worker.
- `ClassLawSampler`: a grain Sampler whose record `i` is a two-stage draw (class from one
  of the `ltjax.samplers` laws, then an image uniformly inside the class; Kang et al. 2020,
  LOBM eq. 4-5). The draw depends only on (seed, i), through a Philox generator keyed by
  both, so the stream is reproducible, resumable from grain's iterator state
  (`get_state` / `set_state`), and shardable: `make_loader` gives host h of H the
  records h, h + H, h + 2H, ..., disjoint positions of one global stream. The generator is
  handed on to the random transforms, so augmentation is deterministic as well.
- numpy transforms run in the workers, as the ImageNet-LT recipes use them (Kang et al.
  2020; Liu et al. 2019): `RandomResizedCrop`, `RandomHorizontalFlip`, `ColorJitter`
  (torchvision semantics), and `ResizeCenterCrop` for evaluation.
- `make_loader`: source + sampler + transforms + batching + sharding + worker processes,
  on grain's dataset API (`MapDataset` -> `IterDataset.mp_prefetch`), as the training
  stream (`ltjax.data.stream`) reads.

For instance-balanced epochs without replacement use grain's own
`grain.samplers.IndexSampler(shuffle=True)` with the same `make_loader`.
"""

from __future__ import annotations

import hashlib
import math
import sys
from typing import Any, Sequence

try:
  import grain
  import grain.python as grain_python
except ImportError as e:  # grain is an extra (pyproject.toml: the dependency rule)
  raise ImportError("ltjax.data.pipeline needs grain: pip install 'ltjax[grain]'.") from e
from absl import flags
import numpy as np
from PIL import Image

from ltjax import samplers
from ltjax.data._io import DataError
from ltjax.data.dataset import ArrayDataset, FileListDataset
from ltjax.data.image_folder import decode_image

Record = dict[str, Any]


def _digest(*parts: Any) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray)
             else str(part).encode())
  return h.hexdigest()[:16]


class ImageFileSource:
  """Random-access source over image files: record i = {"image", "label", "index"}.

  Args:
    paths: the image files.
    labels: (N,) int labels.
    mode: Pillow mode of the decoded images.
    draft_size: None decodes every file at full size. Otherwise the smallest side the
      later transforms need (RandomResizedCrop(224): 224; ResizeCenterCrop(256, 224):
      256): a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale (DCT
      scaling, `decode_image`), its short side still >= draft_size, for a fraction of the
      decoding time. Area fractions and aspect ratios, hence RandomResizedCrop's boxes,
      do not change with the scale; a crop smaller than the output is then upsampled from
      fewer pixels than in the full-size image.
  """

  def __init__(self, paths: Sequence[str], labels: np.ndarray, mode: str = "RGB",
               draft_size: int | None = None):
    if len(paths) != len(labels):
      raise ValueError(f"paths and labels differ in length: {len(paths)} vs {len(labels)}.")
    if draft_size is not None and draft_size < 1:
      raise ValueError(f"draft_size must be >= 1 or None, got {draft_size}.")
    self._paths = tuple(str(p) for p in paths)
    self._labels = np.asarray(labels, np.int32)
    self._mode = mode
    self._draft_size = draft_size
    draft = "" if draft_size is None else f", draft_size={draft_size}"
    self._repr = (f"ImageFileSource(n={len(self._paths)}, mode={mode}{draft}, "
                  f"digest={_digest(self._paths, self._labels)})")

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> Record:
    path = self._paths[index]
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise DataError(f"Cannot read image {path}: {e}") from e
    return {"image": decode_image(data, path, self._mode, self._draft_size),
            "label": self._labels[index], "index": np.int64(index)}

  def __repr__(self) -> str:
    return self._repr


class ArraySource:
  """Random-access source over in-memory uint8 images (e.g. an ArrayDataset split)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if images.shape[0] != labels.shape[0]:
      raise ValueError(f"images and labels differ in length: {images.shape[0]} vs "
                       f"{labels.shape[0]}.")
    self._images = images
    self._labels = np.asarray(labels, np.int32)
    self._repr = f"ArraySource(shape={images.shape}, digest={_digest(self._labels)})"

  def __len__(self) -> int:
    return self._labels.shape[0]

  def __getitem__(self, index: int) -> Record:
    return {"image": self._images[index], "label": self._labels[index],
            "index": np.int64(index)}

  def __repr__(self) -> str:
    return self._repr


def source_for(ds: ArrayDataset | FileListDataset, split: str = "train",
               draft_size: int | None = None):
  """The grain source of one split of a dataset (draft_size: see `ImageFileSource`)."""
  labels = getattr(ds, f"{split}_labels")
  if isinstance(ds, FileListDataset):
    return ImageFileSource(getattr(ds, f"{split}_paths"), labels, draft_size=draft_size)
  return ArraySource(getattr(ds, f"{split}_images"), labels)


class ClassLawSampler:
  """grain Sampler: record i is a two-stage draw from a class law of `ltjax.samplers`.

  P(class k) is `samplers.class_probs(sampler, counts, gamma=gamma, r=r)`: instance
  (n_k / N), class_balanced (1 / K), reverse ((n_max / n_k)^(1/gamma), normalised) or
  inverse_power (n_k^-r, normalised); the image is then uniform inside class k. Draws are
  with replacement and independent across records; record i uses the Philox generator
  keyed by (seed, i), which also feeds the random transforms of that record.

  Args:
    labels: (N,) int labels of the source's records.
    num_classes: K.
    sampler: one of `ltjax.samplers.SAMPLERS`.
    seed: non-negative integer < 2**64.
    num_records: length of the global stream (None: endless).
    gamma: reverse-sampler exponent.
    r: inverse-power exponent.
  """

  def __init__(self, labels: np.ndarray, num_classes: int, sampler: str = "class_balanced",
               *, seed: int = 0, num_records: int | None = None, gamma: float = math.inf,
               r: float = 1.0):
    if int(seed) != seed or not 0 <= seed < 2**64:
      raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}.")
    if num_records is not None and num_records < 1:
      raise ValueError(f"num_records must be >= 1 or None, got {num_records}.")
    index = samplers.numpy_class_index(np.asarray(labels), num_classes)
    self.order, self.starts, self.counts = index
    self.probs = np.asarray(samplers.class_probs(sampler, self.counts, gamma=gamma, r=r),
                            np.float64)
    self._cdf = np.cumsum(self.probs / self.probs.sum())
    self._seed = int(seed)
    self._num_records = num_records
    self._repr = (f"ClassLawSampler(sampler={sampler}, seed={seed}, num_records="
                  f"{num_records}, gamma={gamma}, r={r}, digest={_digest(self.order)})")

  def __len__(self) -> int:
    return sys.maxsize if self._num_records is None else self._num_records

  def __getitem__(self, index: int) -> grain_python.RecordMetadata:
    if index < 0 or index >= len(self):
      raise IndexError(f"record index {index} outside [0, {len(self)}).")
    rng = np.random.Generator(np.random.Philox(key=(self._seed << 64) | int(index)))
    u_class, u_item = rng.random(2)
    k = min(int(np.searchsorted(self._cdf, u_class, side="right")), self._cdf.size - 1)
    offset = min(int(u_item * self.counts[k]), int(self.counts[k]) - 1)
    record_key = int(self.order[self.starts[k] + offset])
    return grain_python.RecordMetadata(index=index, record_key=record_key, rng=rng)

  def __repr__(self) -> str:
    return self._repr


def _to_pil(image: np.ndarray) -> Image.Image:
  """A uint8 (H, W, C) array as a Pillow image (C = 1: mode "L")."""
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image) -> np.ndarray:
  """A Pillow image as a uint8 (H, W, C) array."""
  out = np.asarray(image)
  return out[..., None] if out.ndim == 2 else out


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of a uint8 (H, W, C) image (Pillow)."""
  return _from_pil(_to_pil(image).resize((width, height), Image.BILINEAR))


class RandomResizedCrop(grain.transforms.RandomMap):
  """Crop of random area fraction in `scale` and aspect ratio in `ratio`, resized to size.

  torchvision's algorithm: 10 tries of area ~ U(scale) * H * W and log-uniform aspect
  ratio; if none fits, the central crop with the aspect ratio clamped into `ratio`.
  """

  def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    self.size, self.scale, self.ratio = size, scale, ratio

  def _box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, ...]:
    area = height * width
    log_ratio = np.log(self.ratio)
    for _ in range(10):
      target = area * rng.uniform(*self.scale)
      aspect = math.exp(rng.uniform(*log_ratio))
      w = int(round(math.sqrt(target * aspect)))
      h = int(round(math.sqrt(target / aspect)))
      if 0 < w <= width and 0 < h <= height:
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < self.ratio[0]:
      w, h = width, int(round(width / self.ratio[0]))
    elif aspect > self.ratio[1]:
      h, w = height, int(round(height * self.ratio[1]))
    else:
      h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    image = element["image"]
    top, left, h, w = self._box(image.shape[0], image.shape[1], rng)
    crop = image[top:top + h, left:left + w]
    return {**element, "image": _resize(crop, self.size, self.size)}


class RandomHorizontalFlip(grain.transforms.RandomMap):
  """Mirrors the image left-right with probability p.

  The mirror image is a contiguous array written by Pillow: a reversed numpy view would
  make every later copy of it (jitter, batching) a slow strided copy of 3-byte pixels.
  """

  def __init__(self, p: float = 0.5):
    self.p = p

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    if rng.random() < self.p:
      mirror = _to_pil(element["image"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      return {**element, "image": _from_pil(mirror)}
    return element


def _gray(image: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma (Pillow's "L" conversion), keepdims."""
  if image.shape[-1] == 1:
    return image
  return image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]


class ColorJitter(grain.transforms.RandomMap):
  """torchvision ColorJitter(brightness, contrast, saturation) in numpy, random order.

  Factors are uniform in [1 - s, 1 + s]; brightness scales the pixels, contrast blends
  with the mean grey level, saturation with the per-pixel grey image (x' = f x + (1 - f) g);
  results are clipped to [0, 255]. The ImageNet-LT recipes use 0.4 for all three.
  """

  def __init__(self, brightness: float = 0.4, contrast: float = 0.4,
               saturation: float = 0.4):
    self.strengths = (brightness, contrast, saturation)

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    x = element["image"].astype(np.float32)
    for op in rng.permutation(3):
      s = self.strengths[op]
      if s == 0:
        continue
      f = np.float32(rng.uniform(max(0.0, 1 - s), 1 + s))
      if op == 0:
        x = x * f
      elif op == 1:
        x = f * x + (1 - f) * _gray(x).mean()
      else:
        x = f * x + (1 - f) * _gray(x)
      x = np.clip(x, 0, 255)
    return {**element, "image": np.round(x).astype(np.uint8)}


class ResizeCenterCrop(grain.transforms.Map):
  """Evaluation transform: resize the short side to `resize`, then a central size x size."""

  def __init__(self, resize: int = 256, size: int = 224):
    if size > resize:
      raise ValueError(f"size ({size}) must be <= resize ({resize}).")
    self.resize, self.size = resize, size

  def map(self, element: Record) -> Record:
    image = element["image"]
    h, w = image.shape[:2]
    scale = self.resize / min(h, w)
    nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
    image = _resize(image, nh, nw)
    top, left = (nh - self.size) // 2, (nw - self.size) // 2
    return {**element, "image": image[top:top + self.size, left:left + self.size]}


class ResizeRandomCrop(grain.transforms.RandomMap):
  """Resize to resize x resize (aspect ratio not kept), then a uniformly placed size x size
  crop: the DBN-Mix (sec. 4.2) and CP-Mix (appendix B.2.2) training input, "resized to
  256 x 256 ... randomly cropped to 224 x 224"."""

  def __init__(self, resize: int = 256, size: int = 224):
    if size > resize:
      raise ValueError(f"size ({size}) must be <= resize ({resize}).")
    self.resize, self.size = resize, size

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    image = _resize(element["image"], self.resize, self.resize)
    top, left = (int(rng.integers(0, self.resize - self.size + 1)) for _ in range(2))
    return {**element, "image": image[top:top + self.size, left:left + self.size]}


def train_transforms(size: int = 224, jitter: float = 0.4) -> list[Any]:
  """The ImageNet-LT / iNaturalist training augmentation: crop, flip, colour jitter."""
  return [RandomResizedCrop(size), RandomHorizontalFlip(), ColorJitter(jitter, jitter, jitter)]


def apply_transforms(record: Record, transforms: Sequence[Any],
                     rng: np.random.Generator | None) -> Record:
  """grain `Map` / `RandomMap` transforms applied to one record, in order."""
  for transform in transforms:
    if isinstance(transform, grain.transforms.RandomMap):
      record = transform.random_map(record, rng)
    else:
      record = transform.map(record)
  return record


def prefetched(dataset: grain.MapDataset, *, read_threads: int, read_buffer: int,
               worker_count: int, worker_buffer_size: int = 1) -> grain.IterDataset:
  """`dataset` read ahead: `read_threads` threads, `read_buffer` elements ahead, in
  `worker_count` worker processes (0: in this process).

  grain's workers read absl flags; outside absl.app nobody parsed them, so they are marked
  as parsed when there are workers.
  """
  iterable = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=max(read_threads, 1), prefetch_buffer_size=max(read_buffer, 1)))
  if not worker_count:
    return iterable
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return iterable.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))


class SampledRecords:
  """grain map: local position j -> global record `shard_index + j shard_count` of the
  sampler's stream, read from the source and transformed with the record's generator
  (`sampler[i].rng`). Picklable (the worker processes hold a copy)."""

  def __init__(self, source, sampler, transforms: Sequence[Any], shard_index: int,
               shard_count: int):
    self.source, self.sampler, self.transforms = source, sampler, tuple(transforms)
    self.shard_index, self.shard_count = shard_index, shard_count

  def __call__(self, j: int) -> Record:
    metadata = self.sampler[self.shard_index + int(j) * self.shard_count]
    return apply_transforms(self.source[metadata.record_key], self.transforms, metadata.rng)


def make_loader(source, sampler, *, batch_size: int, transforms: Sequence[Any] = (),
                shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                worker_buffer_size: int = 1, drop_remainder: bool = True,
                read_threads: int = 2, read_buffer: int = 2) -> grain.IterDataset:
  """A grain stream of {"image": (B, H, W, C) uint8, "label": (B,), "index": (B,)}.

  Batch b of this host holds its local records b B, ..., (b + 1) B - 1, i.e. the global
  records h + j H of the sampler's stream (host h of H), each read and transformed with
  its own generator. grain's dataset API: the batches are the elements, read ahead by
  threads and, with `worker_count`, worker processes that each read whole batches (grain
  `mp_prefetch`), so the batches do not depend on the number of workers or threads.

  Args:
    source: a random-access source (`ImageFileSource`, `ArraySource`, `source_for`).
    sampler: `ClassLawSampler` or a grain sampler (e.g. IndexSampler for evaluation).
    batch_size: per-host batch size.
    transforms: grain transforms applied per record before batching.
    shard_index, shard_count: this host's shard (e.g. jax.process_index(),
      jax.process_count()); host h reads global records h, h + H, ... (the first
      H floor(len(sampler) / H) of a finite sampler).
    worker_count: worker processes (0: in this process, as in tests).
    worker_buffer_size: batches each worker process holds ready.
    drop_remainder: drop a last partial batch (a finite sampler).
    read_threads: threads reading (decoding, transforming) batches in each process.
    read_buffer: batches read ahead in each process. Few full-size decoded images at a
      time keep the memory traffic low (grain's default read-ahead of 500 elements would
      hold 500 batches).

  Returns:
    The stream: `iter(loader)` gives a grain DatasetIterator, resumable with get_state /
    set_state.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must lie in [0, {shard_count}), got {shard_index}.")
  records = SampledRecords(source, sampler, transforms, shard_index, shard_count)
  batches = grain.MapDataset.range(len(sampler) // shard_count).map(records).batch(
      batch_size, drop_remainder=drop_remainder)
  return prefetched(batches, read_threads=read_threads, read_buffer=read_buffer,
                    worker_count=worker_count, worker_buffer_size=worker_buffer_size)
