"""Tests of ltjax.data: real offline datasets, archive parsers, cache, errors."""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets as sk_datasets

from ltjax.data import (ArrayDataset, ChecksumError, DATASETS, DataError, FileListDataset,
                        get_dataset, make_longtail)
from ltjax.data import _io, cifar, idx, image_folder, registry, small

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_JPG = SHARED / "cifar10_jpg" / "cifar10_jpg.tar.gz"
FASHION = SHARED / "fashion_mnist"
CIFAR10_RHO100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]

def ldam_counts(n_max: int, num_classes: int, rho: float) -> list[int]:
  """The LDAM-DRW reference loop: int(n_max * (1 / rho) ** (i / (K - 1)))."""
  return [int(n_max * (1.0 / rho) ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def seeded_subset(labels: np.ndarray, counts, seed: int) -> np.ndarray:
  """The documented subset: the first n_k of default_rng([seed, k])'s shuffle of class k."""
  kept = [np.random.default_rng([seed, k]).permutation(np.flatnonzero(labels == k))[:n]
          for k, n in enumerate(counts)]
  return np.sort(np.concatenate(kept))


needs_cifar = pytest.mark.skipif(not CIFAR_JPG.is_file(),
                                 reason=f"offline CIFAR-10 copy {CIFAR_JPG} absent")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason=f"offline Fashion-MNIST copy {FASHION} absent")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("ltjax_cache")


@pytest.fixture(scope="session")
def cifar10(cache_dir):
  """Balanced CIFAR-10 decoded once per session from the shared JPEG archive."""
  if not CIFAR_JPG.is_file():
    pytest.skip(f"offline CIFAR-10 copy {CIFAR_JPG} absent")
  return registry.load_cifar(10, data_dir=CIFAR_JPG, cache_dir=cache_dir)


# ---------------------------------------------------------------- real datasets


@needs_cifar
def test_cifar10_balanced_archive(cifar10):
  assert cifar10.train_images.shape == (50000, 32, 32, 3)
  assert cifar10.test_images.shape == (10000, 32, 32, 3)
  assert cifar10.train_images.dtype == np.uint8
  assert cifar10.class_names == cifar.CIFAR10_CLASSES
  np.testing.assert_array_equal(cifar10.train_counts, [5000] * 10)
  np.testing.assert_array_equal(cifar10.test_counts, [1000] * 10)
  # Channel means documented in ../shared/data/README.md.
  means = cifar10.train_images.reshape(-1, 3).mean(0, dtype=np.float64)
  np.testing.assert_allclose(means, [125.27, 122.93, 113.86], atol=0.01)


@needs_cifar
def test_cifar10_lt_counts_and_seeds(cifar10, cache_dir):
  ds = get_dataset("cifar10_lt", data_dir=CIFAR_JPG, cache_dir=cache_dir, rho=100, seed=0)
  assert ds.meta["cache_hit"]
  np.testing.assert_array_equal(ds.train_counts, CIFAR10_RHO100)
  assert ds.meta["counts"] == CIFAR10_RHO100 and ds.meta["seed"] == 0
  assert ds.meta["original_counts"] == [5000] * 10
  assert ds.train_images.shape == (12406, 32, 32, 3)
  np.testing.assert_array_equal(ds.test_labels, cifar10.test_labels)  # test stays balanced
  same = make_longtail(cifar10, rho=100, seed=0)
  np.testing.assert_array_equal(same.train_images, ds.train_images)
  other = make_longtail(cifar10, rho=100, seed=1)
  np.testing.assert_array_equal(other.train_counts, CIFAR10_RHO100)
  assert not np.array_equal(other.train_images, ds.train_images)


@needs_cifar
def test_cifar10_default_search_finds_shared_copy(cifar10, cache_dir, monkeypatch):
  monkeypatch.delenv("LTJAX_DATA_DIR", raising=False)
  ds = get_dataset("cifar10_lt", cache_dir=cache_dir)
  assert pathlib.Path(ds.meta["source"]).resolve() == CIFAR_JPG.resolve()
  np.testing.assert_array_equal(ds.train_counts, CIFAR10_RHO100)


@needs_fashion
def test_fashion_mnist_lt(cache_dir):
  ds = get_dataset("fashion_mnist_lt", data_dir=FASHION, cache_dir=cache_dir, rho=100)
  assert ds.train_images.shape[1:] == (28, 28, 1) and ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_counts, ldam_counts(6000, 10, 100))
  np.testing.assert_array_equal(ds.test_counts, [1000] * 10)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  assert ds.meta["sha256"]["train-images-idx3-ubyte.gz"] == \
      _io.KNOWN_SHA256["fashion_mnist/train-images-idx3-ubyte.gz"]


def test_digits_lt():
  ds = get_dataset("digits_lt", rho=10, seed=0)
  bunch = sk_datasets.load_digits()
  base = small.digits()
  assert base.train_images.shape[0] + base.test_images.shape[0] == 1797
  per_class = np.bincount(bunch.target, minlength=10)
  np.testing.assert_array_equal(base.test_counts, np.round(per_class / 3).astype(int))
  np.testing.assert_array_equal(
      ds.train_counts, ldam_counts(int(base.train_counts.min()), 10, 10))
  assert ds.train_images.shape[1:] == (8, 8, 1) and ds.train_images.dtype == np.uint8
  # Pixels are min(16 v, 255) of the sklearn values v in 0..16.
  expected = {min(16 * v, 255) for v in range(17)}
  assert set(np.unique(ds.train_images).tolist()) <= expected
  assert ds.train_images.max() == 255
  np.testing.assert_array_equal(ds.test_labels, base.test_labels)


def test_toy2d_matches_cpmix_appendix():
  ds = get_dataset("toy2d")
  assert ds.meta["kind"] == "features" and ds.train_images.dtype == np.float32
  assert ds.train_images.shape == (2100, 2) and ds.test_images.shape == (4000, 2)
  np.testing.assert_array_equal(ds.train_counts, [1000, 1000, 50, 50])
  np.testing.assert_array_equal(ds.test_counts, [1000] * 4)
  for k, mean in enumerate(small.TOY2D_MEANS):
    points = ds.test_images[ds.test_labels == k].astype(np.float64)
    np.testing.assert_allclose(points.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(points.std(0), 0.4, atol=0.03)
  np.testing.assert_array_equal(get_dataset("toy2d", rho=100).train_counts,
                                [1000, 1000, 10, 10])


def test_make_longtail_step_profile_and_test_untouched():
  base = small.toy2d()
  ds = make_longtail(base, profile="step", rho=10, seed=3, mu=0.5)
  np.testing.assert_array_equal(ds.train_counts, [1000, 1000, 100, 100])
  assert ds.meta["profile"] == "step" and ds.meta["seed"] == 3
  np.testing.assert_array_equal(ds.test_images, base.test_images)
  kept = seeded_subset(base.train_labels, [1000, 1000, 100, 100], 3)
  np.testing.assert_array_equal(ds.train_images, base.train_images[kept])


def test_array_dataset_validation():
  images = np.zeros((3, 4, 4, 1), np.uint8)
  labels = np.array([0, 1, 2], np.int32)
  with pytest.raises(ValueError, match="differ in length"):
    ArrayDataset(images, labels[:2], images, labels, ("a", "b", "c"))
  with pytest.raises(ValueError, match="must lie in"):
    ArrayDataset(images, labels, images, labels, ("a", "b"))
  with pytest.raises(ValueError, match="uint8"):
    ArrayDataset(images.astype(np.float64), labels, images, labels, ("a", "b", "c"))
  with pytest.raises(ValueError, match="int32"):
    ArrayDataset(images, labels.astype(np.int64), images, labels, ("a", "b", "c"))


def test_registry_errors(tmp_path):
  with pytest.raises(ValueError, match="cifar10_lt, cifar100_lt"):
    get_dataset("cifar11_lt")
  assert set(DATASETS) == set(registry._LOADERS)
  with pytest.raises(ValueError, match="rho and profile"):
    get_dataset("imagenet_lt", data_dir=tmp_path, rho=10)
  with pytest.raises(ValueError, match="Unknown CIFAR source"):
    get_dataset("cifar10_lt", data_dir=tmp_path, source="web")


# ---------------------------------------------------------------- official CIFAR archives


def _rows(images: np.ndarray) -> np.ndarray:
  """Official row layout: 1024 R, 1024 G, 1024 B values, each plane row-major."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _synthetic_cifar(num_classes: int, per_class: int, seed: int):
  rng = np.random.default_rng(seed)
  labels = np.tile(np.arange(num_classes, dtype=np.int32), per_class)
  images = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
  return images, labels


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  archive.addfile(info, io.BytesIO(data))


def _write_python_archive(path, num_classes, train, test):
  folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
  label_key = b"labels" if num_classes == 10 else b"fine_labels"
  names = [f"class{k}".encode() for k in range(num_classes)]
  with tarfile.open(path, "w:gz") as archive:
    if num_classes == 10:
      batches = [(f"data_batch_{i + 1}", sl) for i, sl in
                 enumerate(np.array_split(np.arange(len(train[1])), 5))]
      for name, sl in batches:
        _add(archive, f"{folder}/{name}", pickle.dumps(
            {b"data": _rows(train[0][sl]), label_key: train[1][sl].tolist()}))
      _add(archive, f"{folder}/test_batch", pickle.dumps(
          {b"data": _rows(test[0]), label_key: test[1].tolist()}))
      _add(archive, f"{folder}/batches.meta", pickle.dumps({b"label_names": names}))
    else:
      for name, (x, y) in (("train", train), ("test", test)):
        _add(archive, f"{folder}/{name}", pickle.dumps(
            {b"data": _rows(x), label_key: y.tolist(), b"coarse_labels": (y // 5).tolist()}))
      _add(archive, f"{folder}/meta", pickle.dumps({b"fine_label_names": names}))


def _write_binary_archive(path, num_classes, train, test):
  folder = "cifar-10-batches-bin" if num_classes == 10 else "cifar-100-binary"

  def records(x, y):
    labels = y[:, None] if num_classes == 10 else np.stack([y // 5, y], 1)
    return np.concatenate([labels.astype(np.uint8), _rows(x)], 1).tobytes()

  with tarfile.open(path, "w:gz") as archive:
    if num_classes == 10:
      for i, sl in enumerate(np.array_split(np.arange(len(train[1])), 5)):
        _add(archive, f"{folder}/data_batch_{i + 1}.bin", records(train[0][sl], train[1][sl]))
      _add(archive, f"{folder}/test_batch.bin", records(*test))
      _add(archive, f"{folder}/batches.meta.txt",
           "".join(f"class{k}\n" for k in range(10)).encode() + b"\n")
    else:
      _add(archive, f"{folder}/train.bin", records(*train))
      _add(archive, f"{folder}/test.bin", records(*test))
      _add(archive, f"{folder}/fine_label_names.txt",
           "".join(f"class{k}\n" for k in range(100)).encode())


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_official_archive_formats(tmp_path, num_classes, fmt):
  train = _synthetic_cifar(num_classes, 3, seed=0)
  test = _synthetic_cifar(num_classes, 1, seed=1)
  path = tmp_path / f"cifar-{num_classes}-{fmt}.tar.gz"
  writer = _write_python_archive if fmt == "python" else _write_binary_archive
  writer(path, num_classes, train, test)
  arrays = cifar.load_cifar_archive(path, num_classes)
  np.testing.assert_array_equal(arrays["train_images"], train[0])
  np.testing.assert_array_equal(arrays["train_labels"], train[1])
  np.testing.assert_array_equal(arrays["test_images"], test[0])
  np.testing.assert_array_equal(arrays["test_labels"], test[1])
  assert arrays["class_names"].tolist() == [f"class{k}" for k in range(num_classes)]


def test_archive_through_registry_and_cache(tmp_path):
  train = _synthetic_cifar(10, 5, seed=0)
  test = _synthetic_cifar(10, 2, seed=1)
  _write_python_archive(tmp_path / "cifar-10-python.tar.gz", 10, train, test)
  cache = tmp_path / "cache"
  first = get_dataset("cifar10_lt", data_dir=tmp_path, cache_dir=cache, rho=5, seed=0)
  assert first.meta["format"] == "archive" and not first.meta["cache_hit"]
  np.testing.assert_array_equal(first.train_counts, ldam_counts(5, 10, 5))
  entries = list(cache.iterdir())
  assert [e.name for e in entries] == [pathlib.Path(first.meta["cache_file"]).name]
  assert entries[0].name.startswith("cifar-10-python.tar.gz-")
  second = get_dataset("cifar10_lt", data_dir=tmp_path, cache_dir=cache, rho=5, seed=0)
  assert second.meta["cache_hit"]
  np.testing.assert_array_equal(second.train_images, first.train_images)
  # A corrupt cache entry is a miss: rebuilt and rewritten atomically.
  entries[0].write_bytes(b"garbage")
  third = get_dataset("cifar10_lt", data_dir=tmp_path, cache_dir=cache, rho=5, seed=0)
  assert not third.meta["cache_hit"]
  np.testing.assert_array_equal(third.train_images, first.train_images)
  assert len(list(cache.iterdir())) == 1


def test_cache_dir_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("LTJAX_CACHE_DIR", str(tmp_path / "env_cache"))
  assert _io.default_cache_dir() == tmp_path / "env_cache"
  assert _io.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
  monkeypatch.delenv("LTJAX_CACHE_DIR")
  assert _io.default_cache_dir() == pathlib.Path.home() / ".cache" / "ltjax"


def test_malicious_pickle_is_refused(tmp_path):

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(path, "w:gz") as archive:
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
      _add(archive, f"cifar-10-batches-py/{name}", pickle.dumps({b"data": Evil()}))
  with pytest.raises(DataError, match="not allowed"):
    cifar.load_cifar_archive(path, 10)


def test_archive_errors(tmp_path):
  not_cifar = tmp_path / "cifar-10-python.tar.gz"
  with tarfile.open(not_cifar, "w:gz") as archive:
    _add(archive, "readme.txt", b"hello")
  with pytest.raises(DataError, match="not a CIFAR-10 archive"):
    cifar.load_cifar_archive(not_cifar, 10)
  truncated = tmp_path / "trunc" / "cifar-10-binary.tar.gz"
  truncated.parent.mkdir()
  _write_binary_archive(truncated, 10, _synthetic_cifar(10, 1, 0), _synthetic_cifar(10, 1, 1))
  truncated.write_bytes(truncated.read_bytes()[:200])
  with pytest.raises(DataError, match="corrupt or truncated"):
    cifar.load_cifar_archive(truncated, 10)


def test_missing_cifar_names_files_and_how_to_get(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    get_dataset("cifar10_lt", data_dir=tmp_path, cache_dir=tmp_path)
  message = str(err.value)
  assert "cifar-10-python.tar.gz" in message and "cifar10_jpg.tar.gz" in message
  assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
  assert "ltjax[tfds]" in message and str(tmp_path) in message


def test_tfds_missing_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install ltjax\[tfds\]"):
    get_dataset("cifar10_lt", source="tfds")


def test_checksum_mismatch_names_file(tmp_path):
  fake = tmp_path / "cifar10_jpg" / "cifar10_jpg.tar.gz"
  fake.parent.mkdir()
  fake.write_bytes(b"not the real archive")
  with pytest.raises(ChecksumError) as err:
    get_dataset("cifar10_lt", data_dir=fake, cache_dir=tmp_path)
  message = str(err.value)
  assert str(fake) in message
  assert _io.KNOWN_SHA256["cifar10_jpg/cifar10_jpg.tar.gz"] in message
  assert _io.sha256_file(fake) in message and "shared/data" in message


# ---------------------------------------------------------------- image folders


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _write_folder_tar(path, classes, per_class, corrupt=None):
  rng = np.random.default_rng(0)
  expected = {}
  with tarfile.open(path, "w:gz") as archive:
    for split in ("train", "test"):
      for label, name in enumerate(classes):
        for i in range(per_class):
          image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
          member = f"{split}/{name}/{i:04d}.png"
          data = b"\xff\xd8 not a jpeg" if member == corrupt else _png(image)
          _add(archive, member.replace(".png", ".jpg") if member == corrupt else member, data)
          expected[(split, name, i)] = image
  return expected


def test_image_folder_tar_and_dir(tmp_path):
  classes = ("zebra", "ant", "moth")
  expected = _write_folder_tar(tmp_path / "tree.tar.gz", classes, per_class=2)
  splits, names = image_folder.read_image_folder(tmp_path / "tree.tar.gz")
  assert names == ("ant", "moth", "zebra")  # sorted folder names by default
  images, labels = splits["train"]
  assert images.shape == (6, 6, 5, 3)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(images[0], expected[("train", "ant", 0)])
  given, given_names = image_folder.read_image_folder(tmp_path / "tree.tar.gz", classes)
  assert given_names == classes
  np.testing.assert_array_equal(given["test"][1], [0, 0, 1, 1, 2, 2])  # by label
  np.testing.assert_array_equal(given["test"][0][0], expected[("test", "zebra", 0)])
  with tarfile.open(tmp_path / "tree.tar.gz") as archive:
    archive.extractall(tmp_path / "tree", filter="data")
  from_dir, _ = image_folder.read_image_folder(tmp_path / "tree", classes)
  np.testing.assert_array_equal(from_dir["train"][0], given["train"][0])
  with pytest.raises(DataError, match="missing"):
    image_folder.read_image_folder(tmp_path / "tree.tar.gz", ("ant", "moth", "bee"))


def test_corrupt_jpeg_names_member(tmp_path):
  path = tmp_path / "cifar10_like.tar.gz"
  _write_folder_tar(path, ("a", "b"), per_class=2, corrupt="train/b/0001.png")
  with pytest.raises(DataError, match=r"train/b/0001\.jpg"):
    image_folder.read_image_folder(path)


def test_truncated_tar_and_missing_folder(tmp_path):
  path = tmp_path / "tree.tar.gz"
  _write_folder_tar(path, ("a", "b"), per_class=3)
  path.write_bytes(path.read_bytes()[:-60])
  with pytest.raises(DataError, match="corrupt or truncated"):
    image_folder.read_image_folder(path)
  with pytest.raises(FileNotFoundError):
    image_folder.read_image_folder(tmp_path / "nowhere.tar.gz")


# ---------------------------------------------------------------- IDX and file lists


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_idx_parser_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
  labels = np.arange(20) % 10
  for prefix in ("train", "t10k"):
    (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(images))
    (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
  ds = registry.load_fashion_mnist(tmp_path, cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(ds.train_images[..., 0], images)
  np.testing.assert_array_equal(ds.test_labels, labels)
  assert ds.class_names == idx.FASHION_MNIST_CLASSES
  (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(_idx(labels[:5]))
  with pytest.raises(DataError, match="do not match"):
    idx.load_fashion_mnist(tmp_path)
  bad = tmp_path / "bad.gz"
  bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
  with pytest.raises(DataError, match="does not match"):
    idx.read_idx(bad)
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    get_dataset("fashion_mnist_lt", data_dir=tmp_path / "empty")


def _touch_images(root: pathlib.Path, relative):
  for rel in relative:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))


def test_imagenet_lt_split_files(tmp_path):
  train = [("train/n01/a b.jpg", 0), ("train/n01/c.jpg", 0), ("train/n02/d.jpg", 1)]
  test = [("val/x.jpg", 1)]
  _touch_images(tmp_path / "images", [p for p, _ in train + test])
  for name, rows in (("ImageNet_LT_train.txt", train), ("ImageNet_LT_test.txt", test)):
    (tmp_path / name).write_text("".join(f"{p} {label}\n" for p, label in rows) + "\n")
  ds = get_dataset("imagenet_lt", data_dir=tmp_path, image_root=tmp_path / "images")
  assert isinstance(ds, FileListDataset) and ds.num_classes == 1000
  assert ds.train_paths[0] == str(tmp_path / "images" / "train/n01/a b.jpg")
  np.testing.assert_array_equal(ds.train_labels, [0, 0, 1])
  np.testing.assert_array_equal(ds.train_counts[:3], [2, 1, 0])
  with pytest.raises(FileNotFoundError, match="image_root"):
    get_dataset("imagenet_lt", data_dir=tmp_path)
  (tmp_path / "ImageNet_LT_test.txt").write_text("val/x.jpg\n")
  with pytest.raises(DataError, match=r"ImageNet_LT_test\.txt:1"):
    get_dataset("imagenet_lt", data_dir=tmp_path, image_root=tmp_path / "images")
  with pytest.raises(FileNotFoundError, match="Places_LT_train.txt"):
    get_dataset("places_lt", data_dir=tmp_path)


def test_inat2018_json(tmp_path):
  categories = [{"id": 7, "name": "Bufo"}, {"id": 3, "name": "Aves"}]
  train = {"images": [{"id": 2, "file_name": "t/2.jpg"}, {"id": 1, "file_name": "t/1.jpg"}],
           "annotations": [{"image_id": 1, "category_id": 7},
                           {"image_id": 2, "category_id": 3}], "categories": categories}
  val = {"images": [{"id": 5, "file_name": "v/5.jpg"}],
         "annotations": [{"image_id": 5, "category_id": 7}], "categories": categories}
  _touch_images(tmp_path, ["t/1.jpg", "t/2.jpg", "v/5.jpg"])
  (tmp_path / "train2018.json").write_text(json.dumps(train))
  (tmp_path / "val2018.json").write_text(json.dumps(val))
  ds = get_dataset("inat2018", data_dir=tmp_path)
  assert ds.class_names == ("Aves", "Bufo")  # labels follow sorted category ids
  assert ds.train_paths == (str(tmp_path / "t/1.jpg"), str(tmp_path / "t/2.jpg"))
  np.testing.assert_array_equal(ds.train_labels, [1, 0])
  np.testing.assert_array_equal(ds.test_labels, [1])
  (tmp_path / "val2018.json").write_text("{}")
  with pytest.raises(DataError, match="annotations"):
    get_dataset("inat2018", data_dir=tmp_path)


def test_import_is_light():
  code = ("import sys, ltjax, ltjax.data; heavy = [m for m in sys.modules if m.split('.')[0] "
          "in ('grain', 'tensorflow', 'tensorflow_datasets')]; assert not heavy, heavy")
  root = pathlib.Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
