"""SVHN (Netzer et al. 2011), cropped digits, from the official `train_32x32.mat` /
`test_32x32.mat` (http://ufldl.stanford.edu/housenumbers/).

Each file is a MATLAB level-5 MAT-file holding `X`, uint8 (32, 32, 3, N) images, and `y`,
(N, 1) labels 1..10, where 10 is the digit 0. They are read by `read_mat`, a reader of
the level-5 format (uncompressed and zlib-compressed numeric matrices; no scipy needed),
and label 10 becomes 0, so label k is the digit k (the TFDS `svhn_cropped` convention).
The 531,131 "extra" images are not used (SVHN-LT is a subsample of the training set:
MAMix paper sec. 4.1, following Yang & Xu 2020).
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib
from typing import Iterator

import numpy as np

from ltjax.data._io import Arrays, DataError

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
SVHN_CLASSES = tuple(str(d) for d in range(10))
TFDS_NAME = "svhn_cropped"

_HEADER_BYTES = 128
_MI_INT8, _MI_UINT32, _MI_INT32, _MI_MATRIX, _MI_COMPRESSED = 1, 6, 5, 14, 15
# Level-5 numeric data types (MAT-File Format, table 1-1) -> numpy kinds.
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8",
              12: "i8", 13: "u8"}


def _elements(buf: bytes, endian: str, where: str) -> Iterator[tuple[int, bytes]]:
  """(data type, payload) of each data element of `buf` (tag of 8 bytes, or 4 for a small
  element); payloads are padded to 8 bytes except compressed ones."""
  pos = 0
  while pos + 8 <= len(buf):
    first, second = struct.unpack_from(endian + "II", buf, pos)
    if first >> 16:  # small element: size and type in 4 bytes, data in the next 4
      yield first & 0xFFFF, buf[pos + 4:pos + 4 + (first >> 16)]
      pos += 8
      continue
    if pos + 8 + second > len(buf):
      raise DataError(f"Truncated MAT-file element in {where}.")
    yield first, buf[pos + 8:pos + 8 + second]
    pos += 8 + second + (0 if first == _MI_COMPRESSED else -second % 8)


def _matrix(payload: bytes, endian: str, where: str) -> tuple[str, np.ndarray]:
  """(name, array) of a miMATRIX payload: flags, dimensions, name, real part."""
  parts = list(_elements(payload, endian, where))
  if len(parts) < 4 or parts[0][0] != _MI_UINT32 or parts[1][0] != _MI_INT32:
    raise DataError(f"Unsupported MAT-file matrix in {where} (not a numeric array).")
  flags = np.frombuffer(parts[0][1], endian + "u4")
  if flags[0] & 0x800:
    raise DataError(f"Complex MAT-file matrix in {where} is not supported.")
  dims = tuple(int(d) for d in np.frombuffer(parts[1][1], endian + "i4"))
  kind, data = parts[3]
  if kind not in _MI_DTYPES:
    raise DataError(f"Unsupported MAT-file data type {kind} in {where}.")
  array = np.frombuffer(data, endian + _MI_DTYPES[kind])
  if array.size != int(np.prod(dims)):
    raise DataError(f"MAT-file matrix in {where} has {array.size} values for shape {dims}.")
  return parts[2][1].decode("ascii"), array.reshape(dims, order="F")


def read_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The numeric matrices of a level-5 MAT-file (MATLAB v5 to v7), by variable name.

  Raises:
    DataError: not a level-5 MAT-file (e.g. v7.3, which is HDF5), a truncated or corrupt
      file, or a variable that is not a real numeric array.
  """
  path = pathlib.Path(path)
  buf = path.read_bytes()
  marker = buf[126:128]
  if len(buf) < _HEADER_BYTES or marker not in (b"IM", b"MI"):
    raise DataError(f"{path} is not a MATLAB level-5 MAT-file.")
  endian = "<" if marker == b"IM" else ">"
  if struct.unpack_from(endian + "H", buf, 124)[0] != 0x0100:
    raise DataError(f"{path} is a MAT-file of an unsupported version (v7.3 / HDF5?); "
                    "save it with -v7 or earlier.")
  out = {}
  for kind, payload in _elements(buf[_HEADER_BYTES:], endian, str(path)):
    if kind == _MI_COMPRESSED:
      try:
        kind, payload = next(_elements(zlib.decompress(payload), endian, str(path)))
      except zlib.error as e:
        raise DataError(f"Corrupt compressed MAT-file element in {path}: {e}.") from e
    if kind == _MI_MATRIX:
      name, array = _matrix(payload, endian, str(path))
      out[name] = array
  return out


def svhn_split(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (N, 32, 32, 3) images, int32 (N,) digit labels) of one official .mat file.

  Raises:
    DataError: missing X / y, wrong shapes, or labels outside 1..10.
  """
  arrays = read_mat(path)
  if "X" not in arrays or "y" not in arrays:
    raise DataError(f"{path} lacks the SVHN variables X and y (found {sorted(arrays)}).")
  x, y = arrays["X"], arrays["y"].reshape(-1)
  if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
    raise DataError(f"{path}: X has shape {x.shape} and y {y.size} labels; expected "
                    "(32, 32, 3, N) and N.")
  if y.size and (y.min() < 1 or y.max() > 10):
    raise DataError(f"{path}: labels outside 1..10 ({int(y.min())}..{int(y.max())}).")
  return (np.ascontiguousarray(x.transpose(3, 0, 1, 2), np.uint8),
          (y.astype(np.int64) % 10).astype(np.int32))


def load_svhn_arrays(train_path: str | os.PathLike, test_path: str | os.PathLike) -> Arrays:
  """The official training and test files as arrays (labels: digit k is k)."""
  train_images, train_labels = svhn_split(train_path)
  test_images, test_labels = svhn_split(test_path)
  return dict(train_images=train_images, train_labels=train_labels, test_images=test_images,
              test_labels=test_labels, class_names=np.array(SVHN_CLASSES))
