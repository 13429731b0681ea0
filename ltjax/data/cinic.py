"""CINIC-10 (Darlow et al. 2018) from its official archive, `CINIC-10.tar.gz`.

The archive (https://datashare.ed.ac.uk/handle/10283/3192) unpacks to three folders of
32x32 PNGs, `train/`, `valid/` and `test/`, each with one folder per CIFAR-10 class
(`train/airplane/*.png`, ...) and 9,000 images per class and split (270,000 in all:
CIFAR-10 images and downsampled ImageNet images of the same classes). It is read as is,
from the tar or from the unpacked folder (`ltjax.data.image_folder`); labels follow the
CIFAR-10 class order, and grayscale PNGs are converted to RGB.

The long-tailed training set is a subsample of `train/` (MAMix paper sec. 4.1, following
Remix, Chou et al. 2020); the model is evaluated on `test/` (or on `valid/`).
"""

from __future__ import annotations

import os

import numpy as np

from ltjax.data import cifar, image_folder
from ltjax.data._io import Arrays

CINIC10_URL = "https://datashare.ed.ac.uk/handle/10283/3192"
CINIC10_ARCHIVE = "CINIC-10.tar.gz"
CINIC10_CLASSES = cifar.CIFAR10_CLASSES
EVAL_SPLITS = ("test", "valid")


def load_cinic_arrays(path: str | os.PathLike, eval_split: str = "test") -> Arrays:
  """CINIC-10's `train/` and `eval_split` folders as uint8 (N, 32, 32, 3) arrays.

  Args:
    path: `CINIC-10.tar.gz` or the folder holding `train/`, `valid/`, `test/`.
    eval_split: the split returned as the test split, "test" or "valid".

  Returns:
    {"train_images", "train_labels", "test_images", "test_labels", "class_names"}.

  Raises:
    ValueError: unknown eval_split.
    DataError: unreadable archive or image, or class folders other than CIFAR-10's.
  """
  if eval_split not in EVAL_SPLITS:
    raise ValueError(f"Unknown CINIC-10 evaluation split {eval_split!r}; valid: "
                     f"{', '.join(EVAL_SPLITS)}.")
  splits, names = image_folder.read_image_folder(path, CINIC10_CLASSES,
                                                 splits=("train", eval_split))
  return dict(train_images=splits["train"][0], train_labels=splits["train"][1],
              test_images=splits[eval_split][0], test_labels=splits[eval_split][1],
              class_names=np.array(names))
