"""File-list datasets: ImageNet-LT / Places-LT split files and iNaturalist 2018 json.

- ImageNet-LT and Places-LT (Liu et al. 2019, OLTR) ship split files such as
  `ImageNet_LT_train.txt` with one `relative/path.jpg <label>` per line; the images live
  under a separate root (the ImageNet / Places-365 image folders).
- iNaturalist 2018 ships `train2018.json` / `val2018.json` in COCO style: "images"
  ({"id", "file_name"}), "annotations" ({"image_id", "category_id"}) and "categories"
  ({"id", "name"}); category ids are mapped to labels in sorted id order.

Nothing is decoded here; `ltjax.data.pipeline` decodes the files on the fly.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

import numpy as np

from ltjax.data._io import DataError
from ltjax.data.dataset import FileListDataset

SPLIT_FILES = {
    "imagenet_lt": ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt", 1000),
    "places_lt": ("Places_LT_train.txt", "Places_LT_test.txt", 365),
}
SPLIT_FILES_URL = "https://github.com/zhmiao/OpenLongTailRecognition-OLTR (data splits)"
INAT_FILES = ("train2018.json", "val2018.json")


def read_split_file(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
  """(relative paths, int32 labels) of a `path label` per line split file.

  Raises:
    FileNotFoundError: the file is missing.
    DataError: a line without an integer label (reported as file:line).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Split file {path} not found; get the split files from "
                            f"{SPLIT_FILES_URL}.")
  paths, labels = [], []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    parts = line.rsplit(None, 1)
    if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
      raise DataError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}.")
    paths.append(parts[0])
    labels.append(int(parts[1]))
  return paths, np.array(labels, np.int32)


def _absolute(root: pathlib.Path, relative: Sequence[str], check: bool = True
              ) -> tuple[str, ...]:
  paths = tuple(str(root / p) for p in relative)
  if check and paths and not pathlib.Path(paths[0]).is_file():
    raise FileNotFoundError(f"Image {paths[0]} (first entry of the split) not found under "
                            f"the image root {root}; pass image_root=<folder holding the "
                            "images>.")
  return paths


def load_split_lists(name: str, split_dir: str | os.PathLike,
                     image_root: str | os.PathLike | None = None,
                     class_names: Sequence[str] | None = None,
                     check_images: bool = True) -> FileListDataset:
  """ImageNet-LT or Places-LT from its split files.

  Args:
    name: "imagenet_lt" or "places_lt".
    split_dir: folder with the `<Name>_LT_train.txt` / `<Name>_LT_test.txt` files.
    image_root: folder the relative paths are relative to (default `split_dir`).
    class_names: names of the classes (default "0", "1", ...).
    check_images: check that the first image exists under the image root (False when the
      images come from elsewhere, e.g. TFDS: `ltjax.data.tfds_source.split_file_source`).
  """
  train_file, test_file, num_classes = SPLIT_FILES[name]
  split_dir = pathlib.Path(split_dir)
  root = pathlib.Path(image_root) if image_root is not None else split_dir
  train_rel, train_labels = read_split_file(split_dir / train_file)
  test_rel, test_labels = read_split_file(split_dir / test_file)
  names = tuple(class_names) if class_names is not None else tuple(
      str(k) for k in range(num_classes))
  return FileListDataset(_absolute(root, train_rel, check_images), train_labels,
                         _absolute(root, test_rel, check_images), test_labels, names,
                         meta={"source": str(split_dir), "root": str(root), "kind": "files",
                               "split_files": [train_file, test_file]})


def _read_inat_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"iNaturalist annotation file {path} not found; get "
                            "train2018.json / val2018.json from "
                            "https://github.com/visipedia/inat_comp/tree/master/2018.")
  try:
    data = json.loads(path.read_text())
    _ = data["images"], data["annotations"], data["categories"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f"{path} is not an iNaturalist annotation file (needs 'images', "
                    f"'annotations' and 'categories'): {e}") from e
  return data


def _inat_split(data: dict, root: pathlib.Path,
                label_of: dict[int, int]) -> tuple[tuple[str, ...], np.ndarray]:
  category_of = {a["image_id"]: a["category_id"] for a in data["annotations"]}
  images = sorted(data["images"], key=lambda im: im["id"])
  missing = [im["id"] for im in images if im["id"] not in category_of]
  if missing:
    raise DataError(f"iNaturalist images without annotation: ids {missing[:5]}.")
  labels = np.array([label_of[category_of[im["id"]]] for im in images], np.int32)
  return _absolute(root, [im["file_name"] for im in images]), labels


def load_inat_json(annotation_dir: str | os.PathLike,
                   image_root: str | os.PathLike | None = None) -> FileListDataset:
  """iNaturalist 2018 from `train2018.json` and `val2018.json` (val is the test split)."""
  annotation_dir = pathlib.Path(annotation_dir)
  root = pathlib.Path(image_root) if image_root is not None else annotation_dir
  train, val = (_read_inat_json(annotation_dir / f) for f in INAT_FILES)
  categories = sorted(train["categories"], key=lambda c: c["id"])
  label_of = {c["id"]: i for i, c in enumerate(categories)}
  train_paths, train_labels = _inat_split(train, root, label_of)
  test_paths, test_labels = _inat_split(val, root, label_of)
  return FileListDataset(train_paths, train_labels, test_paths, test_labels,
                         tuple(str(c["name"]) for c in categories),
                         meta={"source": str(annotation_dir), "root": str(root),
                               "kind": "files", "split_files": list(INAT_FILES)})
