"""CIFAR-10/100 from the official archives (no TensorFlow) or from tensorflow-datasets.

Official archives (https://www.cs.toronto.edu/~kriz/cifar.html), read directly from the tar:

- python format, `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`: pickled dicts with
  b"data" (N, 3072) uint8 rows (1024 R, 1024 G, 1024 B, row-major 32x32) and b"labels"
  (CIFAR-10) or b"fine_labels" (CIFAR-100). Unpickled with a restricted unpickler that only
  admits numpy arrays, so a crafted archive cannot run code.
- binary format, `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`: records of label
  byte(s) (CIFAR-100: coarse, fine) followed by 3072 pixel bytes.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import tarfile
import zlib

import numpy as np

from ltjax.data._io import Arrays, DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/{name}-python.tar.gz"
_PIXELS = 32 * 32 * 3

_PY_MEMBERS = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "batches.meta", b"labels", b"label_names"),
    100: ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels",
          b"fine_label_names"),
}
_BIN_MEMBERS = {
    10: ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
         ["test_batch.bin"], "batches.meta.txt", 1),
    100: ("cifar-100-binary", ["train.bin"], ["test.bin"], "fine_label_names.txt", 2),
}
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickler that only reconstructs numpy arrays and builtin containers."""

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in CIFAR pickles")


def _to_nhwc(rows: np.ndarray, member: str) -> np.ndarray:
  rows = np.asarray(rows, np.uint8)
  if rows.ndim != 2 or rows.shape[1] != _PIXELS:
    raise DataError(f"{member}: expected (N, {_PIXELS}) pixel rows, got {rows.shape}.")
  return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _read_members(path: pathlib.Path, wanted: set[str]) -> dict[str, bytes]:
  """Bytes of the archive members whose base name is in `wanted`."""
  out = {}
  try:
    with tarfile.open(path, "r:*") as archive:
      for member in archive:
        base = pathlib.PurePosixPath(member.name)
        if member.isfile() and base.name in wanted and len(base.parts) >= 2:
          out[f"{base.parent.name}/{base.name}"] = archive.extractfile(member).read()
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f"Cannot read archive {path}: {e}. The file is corrupt or truncated; "
                    f"download it again.") from e
  return out


def _unpickle(data: bytes, member: str) -> dict:
  try:
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # pickle raises many types on corrupt input.
    raise DataError(f"Cannot unpickle CIFAR member {member}: {e}") from e


def _python_split(blobs: dict[str, bytes], folder: str, names: list[str],
                  label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  images, labels = [], []
  for name in names:
    member = f"{folder}/{name}"
    batch = _unpickle(blobs[member], member)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
      raise DataError(f"{member}: missing b'data' or {label_key!r}.")
    images.append(_to_nhwc(batch[b"data"], member))
    labels.append(np.asarray(batch[label_key], np.int32))
    if labels[-1].shape[0] != images[-1].shape[0]:
      raise DataError(f"{member}: {images[-1].shape[0]} images but "
                      f"{labels[-1].shape[0]} labels.")
  return np.concatenate(images), np.concatenate(labels)


def _binary_split(blobs: dict[str, bytes], folder: str, names: list[str],
                  label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  images, labels = [], []
  record = label_bytes + _PIXELS
  for name in names:
    member = f"{folder}/{name}"
    raw = np.frombuffer(blobs[member], np.uint8)
    if raw.size % record:
      raise DataError(f"{member}: {raw.size} bytes is not a multiple of the "
                      f"{record}-byte record size.")
    raw = raw.reshape(-1, record)
    images.append(_to_nhwc(raw[:, label_bytes:], member))
    labels.append(raw[:, label_bytes - 1].astype(np.int32))
  return np.concatenate(images), np.concatenate(labels)


def _names_from_text(data: bytes) -> list[str]:
  return [line.strip() for line in data.decode().splitlines() if line.strip()]


def load_cifar_archive(path: str | os.PathLike, num_classes: int = 10) -> Arrays:
  """Decodes an official CIFAR archive (python or binary format, detected from members).

  Args:
    path: `cifar-10-python.tar.gz`, `cifar-10-binary.tar.gz`, `cifar-100-python.tar.gz`
      or `cifar-100-binary.tar.gz` (any name; the layout inside decides).
    num_classes: 10 or 100 (CIFAR-100 uses the fine labels).

  Returns:
    dict with train_images (50000, 32, 32, 3) uint8, train_labels int32, test_images,
    test_labels, class_names (str array).

  Raises:
    DataError: unreadable archive, missing members, or malformed batches.
  """
  if num_classes not in _PY_MEMBERS:
    raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}.")
  path = pathlib.Path(path)
  folder, train, test, meta, label_key, names_key = _PY_MEMBERS[num_classes]
  bfolder, btrain, btest, bmeta, label_bytes = _BIN_MEMBERS[num_classes]
  blobs = _read_members(path, set(train + test + [meta] + btrain + btest + [bmeta]))
  py = [f"{folder}/{n}" for n in train + test + [meta]]
  binary = [f"{bfolder}/{n}" for n in btrain + btest + [bmeta]]
  if all(m in blobs for m in py):
    names_meta = _unpickle(blobs[f"{folder}/{meta}"], meta)
    class_names = [n.decode() for n in names_meta[names_key]]
    train_split = _python_split(blobs, folder, train, label_key)
    test_split = _python_split(blobs, folder, test, label_key)
  elif all(m in blobs for m in binary):
    class_names = _names_from_text(blobs[f"{bfolder}/{bmeta}"])
    train_split = _binary_split(blobs, bfolder, btrain, label_bytes)
    test_split = _binary_split(blobs, bfolder, btest, label_bytes)
  else:
    raise DataError(f"{path} is not a CIFAR-{num_classes} archive: expected members {py} "
                    f"(python format) or {binary} (binary format).")
  if len(class_names) != num_classes:
    raise DataError(f"{path}: {len(class_names)} class names, expected {num_classes}.")
  return dict(train_images=train_split[0], train_labels=train_split[1],
              test_images=test_split[0], test_labels=test_split[1],
              class_names=np.array(class_names))


def import_tfds():
  """Imports tensorflow_datasets lazily, with an install hint when it is missing."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("tensorflow-datasets is not installed; install it with "
                      "`pip install ltjax[tfds]` or use an offline source (official "
                      "archive or image folder).") from e
  return tfds


def load_tfds_arrays(name: str, data_dir: str | os.PathLike | None = None,
                     download: bool = True) -> Arrays:
  """A tfds image classification dataset ("cifar10", "cifar100") as numpy arrays.

  Raises:
    ImportError: tensorflow-datasets missing (`pip install ltjax[tfds]`).
  """
  tfds = import_tfds()
  builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
  if download:
    builder.download_and_prepare()
  splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1))
  (train, test) = splits
  return dict(train_images=np.asarray(train["image"], np.uint8),
              train_labels=np.asarray(train["label"], np.int32),
              test_images=np.asarray(test["image"], np.uint8),
              test_labels=np.asarray(test["label"], np.int32),
              class_names=np.array(builder.info.features["label"].names))
