"""Fashion-MNIST (and any MNIST-style set) from the original IDX `.gz` files.

IDX format (LeCun et al.): two zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, then one big-endian int32 per dimension, then the data row-major.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib

import numpy as np

from ltjax.data._io import Arrays, DataError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads a (gzipped) IDX file of unsigned bytes.

  Raises:
    DataError: bad magic, unsupported type, or a size that does not match the header.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"Cannot read IDX file {path}: {e}. The file is corrupt or truncated.") \
        from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()}).")
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">i4"))
  if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
    raise DataError(f"{path}: header shape {shape} does not match "
                    f"{len(raw) - header} data bytes.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(data_dir: str | os.PathLike) -> Arrays:
  """Fashion-MNIST from the four IDX files in `data_dir`: (N, 28, 28, 1) uint8 images.

  Raises:
    DataError: malformed files or images and labels of different lengths.
  """
  data_dir = pathlib.Path(data_dir)
  out = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int32)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
      raise DataError(f"Fashion-MNIST {split}: images {images.shape} and labels "
                      f"{labels.shape} do not match.")
    out[f"{split}_images"] = images[..., None]
    out[f"{split}_labels"] = labels
  out["class_names"] = np.array(FASHION_MNIST_CLASSES)
  return out
