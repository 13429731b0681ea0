"""CINIC-10-LT, SVHN-LT and Tiny-ImageNet-LT on tiny fake archives in the official layouts.

Every image carries its class in its pixel values, so labels are checked against the
images themselves; long-tailed counts against the exponential profile computed here,
n_i = floor(n_max rho^(-i / (K - 1))) (Cao et al. 2019; MAMix paper sec. 4.1).
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy import io as sio

from ltjax.data import DATASETS, DEFAULT_LONGTAIL, DataError, get_dataset
from ltjax.data import cinic, svhn

CINIC_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


def exp_counts(n_max: int, num_classes: int, rho: float) -> np.ndarray:
  return np.floor(n_max * rho ** (-np.arange(num_classes) / (num_classes - 1))).astype(int)


def encode(image: Image.Image, fmt: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def code_image(label: int, index: int, size: int, mode: str = "RGB") -> Image.Image:
  """A constant image whose red value is 20 * label (+ index in green, mod 20)."""
  if mode == "L":
    return Image.new("L", (size, size), 20 * label)
  return Image.new("RGB", (size, size), (20 * label, index % 20, 7))


def decoded_labels(images: np.ndarray) -> np.ndarray:
  """The class written into each image by `code_image` (robust to JPEG's +-2)."""
  return np.rint(images[..., 0].mean(axis=(1, 2)) / 20).astype(int)


def check_longtail(ds, n_max: int, rho: float) -> None:
  counts = np.bincount(ds.train_labels, minlength=len(ds.class_names))
  np.testing.assert_array_equal(counts, exp_counts(n_max, len(ds.class_names), rho))
  np.testing.assert_array_equal(decoded_labels(ds.train_images), ds.train_labels)
  np.testing.assert_array_equal(decoded_labels(ds.test_images), ds.test_labels)


def test_registered_with_the_mamix_defaults():
  """MAMix Tables 11, 13, 14: the exponential profile, rho=100 in the first column."""
  for name in ("cinic10_lt", "svhn_lt", "tiny_imagenet_lt"):
    assert name in DATASETS and DEFAULT_LONGTAIL[name] == ("exp", 100.0)


# ------------------------------------------------------------------------------ CINIC-10

CINIC_SIZES = {"train": 20, "valid": 3, "test": 4}


def write_cinic(root) -> None:
  """CINIC-10.tar.gz as released: train/valid/test/<class>/<name>.png, some grayscale."""
  with tarfile.open(root / "CINIC-10.tar.gz", "w:gz") as archive:
    for split, n in CINIC_SIZES.items():
      for label, name in enumerate(CINIC_CLASSES):
        for i in range(n):
          mode = "L" if i == 0 else "RGB"  # CINIC-10 has grayscale ImageNet images
          data = encode(code_image(label, i, 32, mode), "PNG")
          stem = f"n02{label:06d}_{i}" if i % 2 else f"cifar10-{split}-{i}"
          member = tarfile.TarInfo(f"{split}/{name}/{stem}.png")
          member.size = len(data)
          archive.addfile(member, io.BytesIO(data))


def test_cinic10_lt_from_the_archive_and_folder(tmp_path):
  write_cinic(tmp_path)
  ds = get_dataset("cinic10_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache", rho=10.0)
  assert ds.class_names == CINIC_CLASSES
  assert ds.train_images.shape[1:] == (32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (10 * CINIC_SIZES["test"], 32, 32, 3)
  check_longtail(ds, CINIC_SIZES["train"], 10.0)
  assert ds.meta["format"] == "cinic10" and ds.meta["rho"] == 10.0
  again = get_dataset("cinic10_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache", rho=10.0)
  assert again.meta["cache_hit"]
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  valid = get_dataset("cinic10_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache",
                      eval_split="valid")
  assert np.bincount(valid.test_labels).tolist() == [CINIC_SIZES["valid"]] * 10
  check_longtail(valid, CINIC_SIZES["train"], 100.0)
  unpacked = tmp_path / "unpacked"
  with tarfile.open(tmp_path / "CINIC-10.tar.gz") as archive:
    archive.extractall(unpacked, filter="data")
  folder = get_dataset("cinic10_lt", data_dir=unpacked, rho=10.0)
  np.testing.assert_array_equal(folder.train_images, ds.train_images)
  with pytest.raises(ValueError, match="valid: test, valid"):
    cinic.load_cinic_arrays(unpacked, eval_split="train")


# ---------------------------------------------------------------------------------- SVHN

def svhn_split(per_digit, seed: int):
  """X (32, 32, 3, N) uint8 and y (N, 1) in 1..10 (10 = digit 0), as the .mat files."""
  digits = np.repeat(np.arange(10), per_digit)
  np.random.default_rng(seed).shuffle(digits)
  x = np.zeros((len(digits), 32, 32, 3), np.uint8)
  x[..., 0] = (20 * digits)[:, None, None]
  x[:, 3, 5, 1] = np.arange(len(digits)) % 251  # orientation check: one marked pixel
  y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
  return x.transpose(1, 2, 3, 0), y, digits


@pytest.mark.parametrize("compressed", [True, False])
def test_svhn_lt_from_the_mat_files(tmp_path, compressed):
  per_digit = [14, 30, 25, 20, 18, 17, 16, 15, 16, 12]  # imbalanced like SVHN; min 12
  x, y, digits = svhn_split(per_digit, 0)
  sio.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y}, do_compression=compressed)
  xt, yt, digits_t = svhn_split([3] * 10, 1)
  sio.savemat(tmp_path / "test_32x32.mat", {"X": xt, "y": yt.astype(np.float64)},
              do_compression=compressed)
  ds = get_dataset("svhn_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache", rho=4.0)
  np.testing.assert_array_equal(ds.test_labels, digits_t)  # label 10 -> digit 0
  np.testing.assert_array_equal(ds.test_images, xt.transpose(3, 0, 1, 2))
  assert ds.class_names == tuple("0123456789") and ds.meta["original_counts"] == per_digit
  check_longtail(ds, min(per_digit), 4.0)
  marks = ds.train_images[:, 3, 5, 1]  # each kept image is the file's image number `mark`
  np.testing.assert_array_equal(ds.train_images, x.transpose(3, 0, 1, 2)[marks])
  np.testing.assert_array_equal(ds.train_labels, digits[marks])


def test_svhn_mat_reader_errors(tmp_path):
  (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 7.3 but really junk" + bytes(200))
  with pytest.raises(DataError, match="not a MATLAB level-5 MAT-file"):
    svhn.read_mat(tmp_path / "train_32x32.mat")
  sio.savemat(tmp_path / "bad.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                     "y": np.array([[0], [3]], np.uint8)})
  with pytest.raises(DataError, match=r"labels outside 1..10"):
    svhn.svhn_split(tmp_path / "bad.mat")


def test_svhn_tfds_is_optional(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install ltjax\[tfds\]"):
    get_dataset("svhn_lt", source="tfds")
  with pytest.raises(ValueError, match="valid: files, tfds"):
    get_dataset("svhn_lt", source="torrent")


# ------------------------------------------------------------------------- Tiny-ImageNet

WNIDS = ("n09999999", "n01443537", "n04067472", "n02085620")  # wnids.txt is not sorted
TINY_TRAIN, TINY_VAL = 10, 2


def write_tiny(path) -> dict[str, int]:
  """tiny-imagenet-200.zip: wnids.txt, train/<wnid>/images/*.JPEG (+ boxes), val/images
  + val_annotations.txt, unlabelled test/images; returns {val file: label}."""
  label_of = {w: i for i, w in enumerate(sorted(WNIDS))}
  val_labels = {}
  with zipfile.ZipFile(path, "w") as archive:
    root = "tiny-imagenet-200/"
    archive.writestr(root + "wnids.txt", "\n".join(WNIDS) + "\n")
    archive.writestr(root + "words.txt", "".join(f"{w}\tthing {w}\n" for w in WNIDS))
    lines = []
    for wnid in WNIDS:
      label = label_of[wnid]
      archive.writestr(f"{root}train/{wnid}/{wnid}_boxes.txt", "")
      for i in range(TINY_TRAIN):
        mode = "L" if i == 1 else "RGB"
        archive.writestr(f"{root}train/{wnid}/images/{wnid}_{i}.JPEG",
                         encode(code_image(label, i, 64, mode), "JPEG"))
      for i in range(TINY_VAL):
        name = f"val_{len(lines)}.JPEG"
        archive.writestr(f"{root}val/images/{name}", encode(code_image(label, i, 64), "JPEG"))
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        val_labels[name] = label
    archive.writestr(root + "val/val_annotations.txt", "\n".join(lines) + "\n")
    archive.writestr(root + "test/images/test_0.JPEG", encode(code_image(0, 0, 64), "JPEG"))
  return val_labels


def test_tiny_imagenet_lt_from_the_zip_and_folder(tmp_path):
  val_labels = write_tiny(tmp_path / "tiny-imagenet-200.zip")
  ds = get_dataset("tiny_imagenet_lt", data_dir=tmp_path, cache_dir=tmp_path / "cache",
                   rho=5.0)
  assert ds.class_names == tuple(sorted(WNIDS))
  assert ds.train_images.shape[1:] == (64, 64, 3) and ds.test_images.shape == (8, 64, 64, 3)
  assert sorted(ds.test_labels.tolist()) == sorted(val_labels.values())
  check_longtail(ds, TINY_TRAIN, 5.0)
  with zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip") as archive:
    archive.extractall(tmp_path / "unpacked")
  folder = get_dataset("tiny_imagenet_lt", data_dir=tmp_path / "unpacked", rho=5.0)
  np.testing.assert_array_equal(folder.train_images, ds.train_images)
  np.testing.assert_array_equal(folder.test_labels, ds.test_labels)


def test_tiny_imagenet_inconsistent_annotations(tmp_path):
  write_tiny(tmp_path / "t.zip")
  with zipfile.ZipFile(tmp_path / "t.zip") as archive:
    archive.extractall(tmp_path / "u")
  notes = tmp_path / "u" / "tiny-imagenet-200" / "val" / "val_annotations.txt"
  notes.write_text(notes.read_text() + "val_99.JPEG\tn00000001\t0\t0\t1\t1\n")
  with pytest.raises(DataError, match="val_annotations.txt"):
    get_dataset("tiny_imagenet_lt", data_dir=tmp_path / "u")


# ------------------------------------------------------------------------ missing files

@pytest.mark.parametrize("name, files", [
    ("cinic10_lt", ["CINIC-10.tar.gz", "https://datashare.ed.ac.uk/handle/10283/3192"]),
    ("svhn_lt", ["train_32x32.mat", "test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/",
                 "ltjax[tfds]"]),
    ("tiny_imagenet_lt", ["tiny-imagenet-200.zip",
                          "http://cs231n.stanford.edu/tiny-imagenet-200.zip"]),
])
def test_missing_files_name_the_files_and_where_to_get_them(tmp_path, name, files):
  with pytest.raises(FileNotFoundError) as err:
    get_dataset(name, data_dir=tmp_path, cache_dir=tmp_path)
  for text in files + [str(tmp_path)]:
    assert text in str(err.value), text


# ----------------------------------------------------------------------------- configs
# EXPECTED is written from the MAMix paper's appendix (/work/shared/seeds/004_*.txt, A.2-A.4)
# and, for protocol=code, from the imbalanced-DL code (example/config/config_*.yaml,
# strategy/trainer.py `adjust_learning_rate`: one 200-epoch schedule, x0.01 at 160, x1e-4 at
# 180 after a 5-epoch warm-up; DRW `epoch // 160`): (epochs, milestones, cumulative factors,
# warm-up, DRW epoch, model, crop padding, normalisation).

EXPECTED = {
    ("cinic10_lt", "paper"): (200, (160, 180), (0.01, 1e-4), 5, 160, "resnet18_cifar", 4,
                              "cinic10"),
    ("cinic10_lt", "code"): (200, (160, 180), (0.01, 1e-4), 5, 160, "resnet18_cifar", 4,
                             "cinic10"),
    ("svhn_lt", "paper"): (200, (160, 180), (0.1, 0.01), 5, 160, "resnet32", 4, "half"),
    ("svhn_lt", "code"): (200, (160, 180), (0.01, 1e-4), 5, 160, "resnet32", 4, "half"),
    ("tiny_imagenet_lt", "paper"): (120, (90,), (0.1,), 5, 90, "resnet18_cifar", 8,
                                    "imagenet"),
    ("tiny_imagenet_lt", "code"): (200, (160, 180), (0.01, 1e-4), 5, 160, "resnet18_cifar", 8,
                                   "imagenet"),
}
# The first column (exponential, rho = 100) of MAMix Tables 11, 13 and 14.
TABLE_ROWS = {"cinic10_lt": ("Table 11", "mamix_drw", "71.76"),
              "svhn_lt": ("Table 13", "mamix_drw", "85.41"),
              "tiny_imagenet_lt": ("Table 14", "mixup_drw", "37.97")}


def mamix_config(name, arg=""):
  import pathlib
  from experiments import compare
  path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / f"{name}.py"
  return compare.load_config_module(str(path)).get_config(arg)


@pytest.mark.parametrize("name,kind", sorted(EXPECTED))
def test_configs_follow_the_mamix_protocols(name, kind):
  cfg = mamix_config(name, f"method=mamix_drw,protocol={kind}")
  got = (cfg.num_epochs, tuple(cfg.schedule.milestones), tuple(cfg.schedule.factors),
         cfg.schedule.warmup_epochs, cfg.recipe.drw_epoch, cfg.model.name, cfg.augment.pad,
         cfg.normalize)
  assert got == EXPECTED[(name, kind)]
  assert (cfg.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (
      128, 0.1, 0.9, 2e-4)
  assert cfg.augment.flip and (cfg.dataset.name, cfg.dataset.rho) == (name, 100.0)
  assert (cfg.recipe.alpha, cfg.recipe.omega) == (1.0, 0.25)  # MAMix sec. 4
  table, method, accuracy = TABLE_ROWS[name]
  row = mamix_config(name, f"method={method},protocol={kind}").reproduces
  assert f"MAMix {table}" in row and accuracy in row
  assert mamix_config(name, "method=lobm").reproduces.startswith("nothing")
  assert mamix_config(name, "method=erm,profile=step,rho=10").dataset.profile == "step"


def test_cinic_evaluates_on_valid_as_the_code():
  assert mamix_config("cinic10_lt").dataset.eval_split == "valid"


def _write(name, root):
  if name == "cinic10_lt":
    write_cinic(root)
  elif name == "svhn_lt":
    x, y, _ = svhn_split([12] * 10, 0)
    sio.savemat(root / "train_32x32.mat", {"X": x, "y": y})
    xt, yt, _ = svhn_split([1] * 10, 1)
    sio.savemat(root / "test_32x32.mat", {"X": xt, "y": yt})
  else:
    write_tiny(root / "tiny-imagenet-200.zip")


@pytest.mark.parametrize("name", sorted(TABLE_ROWS))
def test_quick_configs_train_a_few_steps(name, tmp_path):
  from experiments import runner
  from ltjax import reporting
  _write(name, tmp_path)
  cfg = mamix_config(name, "method=mamix_drw,quick,rho=4")
  with cfg.unlocked():
    cfg.dataset.data_dir = str(tmp_path)
    cfg.dataset.cache_dir = str(tmp_path / "cache")
    cfg.progress = False
    cfg.batch_size = 16
  results = runner.run(cfg, str(tmp_path / "run"), stop_after=1, log=lambda _: None)
  assert results["final"]["top1"] is not None
  rows = reporting.read_metrics(str(tmp_path / "run"))
  assert rows and np.isfinite(rows[-1]["train/loss"])
