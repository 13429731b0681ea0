"""Random-access sources over TFDS ArrayRecord data (`tfds.data_sources`) for grain.

TFDS has the full datasets the long-tailed benchmarks are cut from (`imagenet2012`), but
none of the long-tailed subsets: ImageNet-LT's split files (Liu et al. 2019) name ImageNet
images, e.g. `train/n01440764/n01440764_10026.JPEG 0` and
`val/n01440764/ILSVRC2012_val_00000293.JPEG 0`. `SubsetSource` therefore takes a TFDS data
source plus the record indices of the subset (and its labels), and `split_file_source`
finds those indices by matching the split file's image names with the records'
`file_name` feature (TFDS `imagenet2012` stores the basename, e.g.
`n01440764_10026.JPEG`).

Records come out as the other ltjax sources' (`ltjax.data.pipeline.ImageFileSource`):
{"image": uint8 (H, W, C), "label": int32, "index": int64 (position in the subset)}, so the
same samplers, transforms and `make_loader` apply. With `raw_images=True` (default) the
TFDS image feature is left encoded (`tfds.decode.SkipDecoding`) and decoded by `decode` in
the grain worker, as the file sources are.

tensorflow-datasets is an optional extra (`pip install 'ltjax[tfds]'`); it is imported only
when a TFDS source is opened, and every function takes an already opened `source` instead
(anything with `__len__` and `__getitem__` returning dicts, e.g. a list of dicts in tests).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ltjax.data import filelists
from ltjax.data._io import DataError
from ltjax.data.image_folder import decode_image

Record = dict[str, Any]
Decoder = Callable[[bytes, str], np.ndarray]


def tfds_data_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                     raw_images: bool = True, image_key: str = "image") -> Any:
  """`tfds.data_sources(name, split=split)`: random access to a prepared TFDS dataset.

  Args:
    name: TFDS dataset name, e.g. "imagenet2012" (prepared beforehand in ArrayRecord
      format: `tfds build imagenet2012 --file_format=array_record`; ImageNet needs its
      archives placed by hand, see the TFDS catalogue).
    split: TFDS split, e.g. "train" or "validation".
    data_dir: TFDS data directory (default: TFDS's, `$TFDS_DATA_DIR` or ~/tensorflow_datasets).
    raw_images: keep `image_key` encoded (JPEG bytes) for decoding in the grain worker.
    image_key: the image feature.

  Raises:
    ImportError: tensorflow-datasets is not installed (says how to install it).
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("TFDS sources need tensorflow-datasets: pip install 'ltjax[tfds]'."
                      ) from e
  decoders = {image_key: tfds.decode.SkipDecoding()} if raw_images else None
  return tfds.data_sources(name, split=split, data_dir=data_dir, decoders=decoders)


def _text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode() if isinstance(value, bytes) else str(value)


class SubsetSource:
  """Records `indices` of a random-access `source`, relabelled: record i = source[indices[i]].

  Args:
    source: the full dataset (a TFDS data source, or any sequence of dicts).
    indices: record indices of the subset, in the subset's order.
    labels: the subset's labels (default: the records' own `label_key`).
    image_key, label_key: the features holding the image and the label.
    decode: `decode(data, name)` for an encoded image (bytes): uint8 (H, W, C); default
      `ltjax.data.image_folder.decode_image` (RGB).
  """

  def __init__(self, source: Any, indices: Sequence[int], labels: np.ndarray | None = None,
               *, image_key: str = "image", label_key: str = "label",
               decode: Decoder = decode_image):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    if self._indices.size and (self._indices.min() < 0 or
                               self._indices.max() >= len(source)):
      raise ValueError(f"indices must lie in [0, {len(source)}), the source's length.")
    if labels is not None and len(labels) != len(self._indices):
      raise ValueError(f"labels and indices differ in length: {len(labels)} vs "
                       f"{len(self._indices)}.")
    self._labels = None if labels is None else np.asarray(labels, np.int32)
    self._image_key, self._label_key, self._decode = image_key, label_key, decode

  def __len__(self) -> int:
    return int(self._indices.size)

  def __getitem__(self, index: int) -> Record:
    position = int(self._indices[index])
    record = self._source[position]
    image = record[self._image_key]
    if isinstance(image, (bytes, np.bytes_)):
      image = self._decode(bytes(image), f"record {position}")
    label = (self._labels[index] if self._labels is not None
             else np.int32(record[self._label_key]))
    return {"image": np.asarray(image), "label": label, "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"SubsetSource(n={len(self)}, of={len(self._source)})"


def name_index(source: Any, key: str = "file_name") -> dict[str, int]:
  """{record's `key` (basename): record index} over the whole source.

  Reads every record once (for ImageNet's 1.28 M, minutes with `raw_images=True`; keep the
  result if you open the subset often).

  Raises:
    DataError: two records share a name.
  """
  index: dict[str, int] = {}
  for position in range(len(source)):
    name = os.path.basename(_text(source[position][key]))
    if name in index:
      raise DataError(f"Records {index[name]} and {position} share the {key} {name!r}.")
    index[name] = position
  return index


def subset_indices(paths: Sequence[str], names: Mapping[str, int]) -> np.ndarray:
  """Record indices of the images `paths` (split-file paths, matched by basename).

  Raises:
    DataError: an image of the split is not in the TFDS dataset (names the first).
  """
  indices = []
  for path in paths:
    position = names.get(os.path.basename(path))
    if position is None:
      raise DataError(f"Image {path} of the split file is not in the TFDS dataset "
                      f"({len(names)} records); is it another dataset or split?")
    indices.append(position)
  return np.asarray(indices, np.int64)


def split_file_source(split_file: str | os.PathLike, source: Any, *,
                      names: Mapping[str, int] | None = None, name_key: str = "file_name",
                      **kwargs: Any) -> SubsetSource:
  """The subset of `source` an ImageNet-LT-style split file lists, with the file's labels.

  Args:
    split_file: `relative/path.jpg <label>` per line (`ltjax.data.filelists`), e.g.
      ImageNet_LT_train.txt (against TFDS `imagenet2012` split "train") or
      ImageNet_LT_test.txt (against split "validation").
    source: the full TFDS split (`tfds_data_source("imagenet2012", "train")`) or any
      sequence of dicts with `name_key`.
    names: a precomputed `name_index(source, name_key)`.
    name_key: the feature holding the image's file name.
    **kwargs: `SubsetSource` options (image_key, label_key, decode).

  Raises:
    FileNotFoundError: no split file.
    DataError: a bad line, or an image the source does not have.
  """
  paths, labels = filelists.read_split_file(pathlib.Path(split_file))
  names = name_index(source, name_key) if names is None else names
  return SubsetSource(source, subset_indices(paths, names), labels, **kwargs)
