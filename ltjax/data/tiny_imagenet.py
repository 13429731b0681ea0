"""Tiny-ImageNet (Le & Yang 2015; 200 classes, 64x64) from `tiny-imagenet-200.zip`.

The official archive (http://cs231n.stanford.edu/tiny-imagenet-200.zip) holds one folder,
`tiny-imagenet-200/`, with

- `wnids.txt`: the 200 WordNet ids, one a line;
- `train/<wnid>/images/<wnid>_<i>.JPEG`: 500 training images per class (and a boxes file);
- `val/images/val_<i>.JPEG` and `val/val_annotations.txt` (tab-separated: file name, wnid,
  box): 50 labelled images per class, the evaluation split (the test images are unlabelled).

It is read from the zip or from the unpacked folder. Label k is the k-th wnid in sorted
order (the class order of a torchvision ImageFolder over `train/`); grayscale JPEGs are
converted to RGB, so every image is uint8 (64, 64, 3). The long-tailed training set is a
subsample of `train/` (MAMix paper sec. 4.1, following Cao et al. 2019).
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Callable

import numpy as np

from ltjax.data import image_folder
from ltjax.data._io import Arrays, DataError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_ARCHIVE = "tiny-imagenet-200.zip"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
_IMAGE_SUFFIX = ".jpeg"

Reader = Callable[[str], bytes]


def _zip_tree(path: pathlib.Path) -> tuple[list[str], Reader]:
  """Member names relative to the folder holding wnids.txt, and a reader of them."""
  try:
    archive = zipfile.ZipFile(path)
    names = [n for n in archive.namelist() if not n.endswith("/")]
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f"Cannot read archive {path}: {e}. The file is corrupt or truncated.") \
        from e
  roots = sorted((n[:-len("wnids.txt")] for n in names if n.endswith("wnids.txt")), key=len)
  if not roots:
    raise DataError(f"{path} holds no wnids.txt: not the Tiny-ImageNet archive.")
  root = roots[0]
  return [n[len(root):] for n in names if n.startswith(root)], lambda n: archive.read(root + n)


def _dir_tree(path: pathlib.Path) -> tuple[list[str], Reader]:
  root = path if (path / "wnids.txt").is_file() else path / TINY_IMAGENET_FOLDER
  if not (root / "wnids.txt").is_file():
    raise DataError(f"{path} holds no wnids.txt: not the Tiny-ImageNet folder.")
  names = [f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()]
  return names, lambda n: (root / n).read_bytes()


def _decode_all(names: list[str], read: Reader, where: str) -> np.ndarray:
  if not names:
    raise DataError(f"No images found in {where}.")
  images = [image_folder.decode_image(read(n), f"{where}:{n}") for n in names]
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise DataError(f"Images in {where} have different shapes {sorted(shapes)}.")
  return np.stack(images)


def _val_labels(text: str, label_of: dict[str, int], where: str) -> dict[str, int]:
  """{val image file name: label} from val_annotations.txt."""
  out = {}
  for line in filter(None, (l.strip() for l in text.splitlines())):
    fields = line.split("\t")
    if len(fields) < 2 or fields[1] not in label_of:
      raise DataError(f"Bad line in {where}:val/val_annotations.txt: {line!r}.")
    out[fields[0]] = label_of[fields[1]]
  return out


def load_tiny_imagenet_arrays(path: str | os.PathLike) -> Arrays:
  """The training images and the labelled validation images as uint8 arrays.

  Args:
    path: `tiny-imagenet-200.zip`, the unpacked `tiny-imagenet-200/` folder or its parent.

  Returns:
    {"train_images", "train_labels", "test_images" (the val split), "test_labels",
    "class_names" (sorted wnids)}; images ordered by (label, file name).

  Raises:
    FileNotFoundError: `path` does not exist.
    DataError: a missing wnids.txt / val_annotations.txt, an annotation or image folder of
      an unknown wnid, an undecodable image, or images of different sizes.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Tiny-ImageNet archive or folder {path} not found.")
  names, read = _dir_tree(path) if path.is_dir() else _zip_tree(path)
  wnids = sorted(filter(None, read("wnids.txt").decode().split()))
  label_of = {w: i for i, w in enumerate(wnids)}
  train = sorted((label_of.get(n.split("/")[1], -1), n) for n in names
                 if n.startswith("train/") and n.lower().endswith(_IMAGE_SUFFIX))
  unknown = sorted({n.split("/")[1] for label, n in train if label < 0})
  if unknown:
    raise DataError(f"Training folders of wnids not in wnids.txt in {path}: {unknown}.")
  if "val/val_annotations.txt" not in names:
    raise DataError(f"{path} lacks val/val_annotations.txt.")
  val_of = _val_labels(read("val/val_annotations.txt").decode(), label_of, str(path))
  val = sorted((val_of[n.rsplit("/", 1)[1]], n) for n in names
               if n.startswith("val/images/") and n.rsplit("/", 1)[1] in val_of)
  missing = sorted(set(val_of) - {n.rsplit("/", 1)[1] for _, n in val})
  if missing:
    raise DataError(f"Images of val/val_annotations.txt missing from val/images/ in {path}: "
                    f"{missing[:5]}{' ...' if len(missing) > 5 else ''}.")
  return dict(train_images=_decode_all([n for _, n in train], read, str(path)),
              train_labels=np.array([label for label, _ in train], np.int32),
              test_images=_decode_all([n for _, n in val], read, str(path)),
              test_labels=np.array([label for label, _ in val], np.int32),
              class_names=np.array(wnids))
