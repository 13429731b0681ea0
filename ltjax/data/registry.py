"""`get_dataset(name, ...)`: every dataset ltjax knows, by name.

| name             | returns         | sources                                                  |
|------------------|-----------------|----------------------------------------------------------|
| cifar10_lt       | ArrayDataset    | image-folder tar/dir, official python/binary archive, tfds |
| cifar100_lt      | ArrayDataset    | same, CIFAR-100 (fine labels)                             |
| fashion_mnist_lt | ArrayDataset    | the four IDX .gz files                                    |
| digits_lt        | ArrayDataset    | scikit-learn (embedded, no file)                          |
| toy2d            | ArrayDataset    | generated (CP-Mix appendix B.1), (N, 2) float32 features  |
| imagenet_lt      | FileListDataset | ImageNet_LT_{train,test}.txt + image root                 |
| places_lt        | FileListDataset | Places_LT_{train,test}.txt + image root                   |
| inat2018         | FileListDataset | train2018.json / val2018.json + image root                |

Files are looked up in `data_dir` when given (a file or a folder), else in
`$LTJAX_DATA_DIR`, `../shared/data` relative to the working directory and to the
repository, and for Fashion-MNIST Debian's `/usr/share/datasets/fashion-mnist`; each
folder is searched with its dataset subfolders (`cifar10_jpg`, `fashion_mnist`, ...).
Decoded files are cached (`ltjax.data._io.cached`); plain directories are decoded every
time. The first five are made long-tailed by `make_longtail` (training split only);
ImageNet-LT, Places-LT and iNaturalist are long-tailed already.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from ltjax.data import cifar, filelists, idx, image_folder, small
from ltjax.data._io import Arrays, cached
from ltjax.data.dataset import ArrayDataset, Dataset, make_longtail

DATASETS = ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "digits_lt", "toy2d",
            "imagenet_lt", "places_lt", "inat2018")
# (profile, rho) used when get_dataset is called without them.
DEFAULT_LONGTAIL = {"cifar10_lt": ("exp", 100.0), "cifar100_lt": ("exp", 100.0),
                    "fashion_mnist_lt": ("exp", 100.0), "digits_lt": ("exp", 10.0),
                    "toy2d": ("step", 20.0)}
CIFAR_SOURCES = ("auto", "folder", "archive", "tfds")
_REPO = pathlib.Path(__file__).resolve().parents[2]
_FASHION_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def search_dirs(data_dir: str | os.PathLike | None,
                subdirs: Sequence[str]) -> list[pathlib.Path]:
  """Folders searched for a dataset's files (see the module docstring), in order."""
  if data_dir is not None:
    bases = [pathlib.Path(data_dir)]
  else:
    env = os.environ.get("LTJAX_DATA_DIR")
    bases = ([pathlib.Path(env)] if env else []) + [
        pathlib.Path.cwd().parent / "shared" / "data", _REPO.parent / "shared" / "data"]
  dirs = []
  for base in bases:
    for d in [base] + [base / s for s in subdirs]:
      if d not in dirs:
        dirs.append(d)
  return dirs


def _array_dataset(arrays: Arrays, meta: dict) -> ArrayDataset:
  return ArrayDataset(arrays["train_images"], arrays["train_labels"].astype(np.int32),
                      arrays["test_images"], arrays["test_labels"].astype(np.int32),
                      tuple(str(c) for c in arrays["class_names"]), meta=meta)


def _decoded(name: str, path: pathlib.Path, build: Callable[[], Arrays], fmt: str,
             cache_dir, use_cache: bool, how_to_get: str) -> ArrayDataset:
  """Arrays of one source, through the cache for files (directories are not cached)."""
  if path.is_dir():
    return _array_dataset(build(), {"source": str(path), "format": fmt, "kind": "images",
                                    "cache_hit": False})
  arrays, info = cached(name, [path], build, cache_dir=cache_dir, use_cache=use_cache,
                        how_to_get=how_to_get)
  return _array_dataset(arrays, {"source": str(path), "format": fmt, "kind": "images",
                                 **info})


def _cifar_candidates(k: int, source: str) -> list[tuple[str, str]]:
  folder = [(f"cifar{k}_jpg.tar.gz", "folder"), (f"cifar{k}_jpg", "folder")]
  archive = [(f"cifar-{k}-python.tar.gz", "archive"), (f"cifar-{k}-binary.tar.gz", "archive")]
  return {"auto": folder + archive, "folder": folder, "archive": archive}[source]


def _cifar_folder_arrays(path: pathlib.Path, k: int) -> Arrays:
  splits, names = image_folder.read_image_folder(
      path, cifar.CIFAR10_CLASSES if k == 10 else None)
  return dict(train_images=splits["train"][0], train_labels=splits["train"][1],
              test_images=splits["test"][0], test_labels=splits["test"][1],
              class_names=np.array(names))


def load_cifar(num_classes: int = 10, data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, source: str = "auto",
               use_cache: bool = True, download: bool = False) -> ArrayDataset:
  """Balanced CIFAR-10/100 (uint8 (N, 32, 32, 3)) from the first source found.

  Args:
    num_classes: 10 or 100.
    data_dir: a CIFAR file / folder, or a folder to search (see the module docstring).
    cache_dir: decoded-array cache (see `ltjax.data._io.default_cache_dir`).
    source: "auto" (image folder, then official archives), "folder", "archive" or "tfds".
    use_cache: read / write the decoded-array cache.
    download: with source="tfds", let tfds download the data.

  Raises:
    FileNotFoundError: no file found; the message names the files and how to get them.
    ImportError: source="tfds" without tensorflow-datasets.
    DataError / ChecksumError: a corrupt file.
  """
  if source not in CIFAR_SOURCES:
    raise ValueError(f"Unknown CIFAR source {source!r}; valid: {', '.join(CIFAR_SOURCES)}.")
  if source == "tfds":
    arrays = cifar.load_tfds_arrays(f"cifar{num_classes}", data_dir, download)
    return _array_dataset(arrays, {"source": "tfds", "format": "tfds", "kind": "images"})
  candidates = _cifar_candidates(num_classes, source)
  subdirs = [f"cifar{num_classes}_jpg", f"cifar{num_classes}"]
  url = cifar.CIFAR_URL.format(name=f"cifar-{num_classes}")
  how_to_get = (f"the image-folder archive cifar{num_classes}_jpg.tar.gz (../shared/data), "
                f"or the official archive {url}, or `pip install ltjax[tfds]` and "
                "source='tfds'")
  found = _find_cifar(data_dir, subdirs, candidates)
  if found is None:
    searched = ", ".join(str(d) for d in search_dirs(data_dir, subdirs))
    raise FileNotFoundError(
        f"CIFAR-{num_classes} not found: looked for {[c for c, _ in candidates]} in "
        f"{searched}. Get {how_to_get}; put it in one of these folders, pass data_dir=, or "
        "set LTJAX_DATA_DIR.")
  path, fmt = found
  if fmt == "folder":
    build = lambda: _cifar_folder_arrays(path, num_classes)
  else:
    build = lambda: cifar.load_cifar_archive(path, num_classes)
  return _decoded(f"cifar{num_classes}", path, build, fmt, cache_dir, use_cache, how_to_get)


def _find_cifar(data_dir, subdirs: Sequence[str], candidates: Sequence[tuple[str, str]]
                ) -> tuple[pathlib.Path, str] | None:
  """(path, format) of the first CIFAR source found; data_dir itself when it is a file."""
  if data_dir is not None and pathlib.Path(data_dir).is_file():
    path = pathlib.Path(data_dir)
    return path, _format_of(path)
  for d in search_dirs(data_dir, subdirs):
    for file_name, fmt in candidates:
      path = d / file_name
      if path.is_file() or (path / "train").is_dir():
        return path, fmt
  return None


def _format_of(path: pathlib.Path) -> str:
  """"archive" for official CIFAR archives (by name), else "folder" (image tree)."""
  return "archive" if path.name.startswith(("cifar-10-", "cifar-100-")) else "folder"


def load_fashion_mnist(data_dir: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None,
                       use_cache: bool = True) -> ArrayDataset:
  """Balanced Fashion-MNIST, (N, 28, 28, 1) uint8, from the IDX .gz files.

  Raises:
    FileNotFoundError: the four files are not in any searched folder.
  """
  dirs = search_dirs(data_dir, ["fashion_mnist", "fashion-mnist"])
  dirs += [] if data_dir is not None else [_FASHION_SYSTEM_DIR]
  found = next((d for d in dirs if all((d / f).is_file() for f in idx.FASHION_MNIST_FILES)),
               None)
  if found is None:
    raise FileNotFoundError(
        f"Fashion-MNIST not found: looked for {list(idx.FASHION_MNIST_FILES)} in "
        f"{', '.join(map(str, dirs))}. They are in ../shared/data/fashion_mnist, in Debian's "
        "package dataset-fashion-mnist, or at https://github.com/zalandoresearch/"
        "fashion-mnist; pass data_dir= or set LTJAX_DATA_DIR.")
  sources = [found / f for f in idx.FASHION_MNIST_FILES]
  arrays, info = cached("fashion_mnist", sources, lambda: idx.load_fashion_mnist(found),
                        cache_dir=cache_dir, use_cache=use_cache,
                        how_to_get="../shared/data/fashion_mnist or "
                                   "https://github.com/zalandoresearch/fashion-mnist")
  return _array_dataset(arrays, {"source": str(found), "format": "idx", "kind": "images",
                                 **info})


def _long_tailed(loader: Callable[..., Dataset], name: str) -> Callable[..., Dataset]:
  def load(*, data_dir, cache_dir, rho, profile, seed, mu, **kw) -> Dataset:
    default_profile, default_rho = DEFAULT_LONGTAIL[name]
    ds = loader(data_dir=data_dir, cache_dir=cache_dir, **kw)
    return make_longtail(ds, profile or default_profile,
                         default_rho if rho is None else rho, seed, mu)
  return load


def _without_files(loader: Callable[..., ArrayDataset]) -> Callable[..., ArrayDataset]:
  def load(*, data_dir, cache_dir, **kw) -> ArrayDataset:
    del data_dir, cache_dir  # Embedded or generated data.
    return loader(**kw)
  return load


def _already_long_tailed(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
  def load(*, data_dir, cache_dir, rho, profile, seed, mu, **kw) -> Dataset:
    del cache_dir, seed, mu
    if rho is not None or profile is not None:
      raise ValueError("This dataset is long-tailed by its split files; rho and profile "
                       "do not apply.")
    if data_dir is None:
      raise ValueError("Pass data_dir= (the folder holding the split / annotation files) "
                       "and image_root= (the image folder) for this dataset.")
    return loader(data_dir, **kw)
  return load


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10_lt": _long_tailed(lambda **kw: load_cifar(10, **kw), "cifar10_lt"),
    "cifar100_lt": _long_tailed(lambda **kw: load_cifar(100, **kw), "cifar100_lt"),
    "fashion_mnist_lt": _long_tailed(load_fashion_mnist, "fashion_mnist_lt"),
    "digits_lt": _long_tailed(_without_files(small.digits), "digits_lt"),
    "toy2d": _long_tailed(_without_files(small.toy2d), "toy2d"),
    "imagenet_lt": _already_long_tailed(
        lambda d, **kw: filelists.load_split_lists("imagenet_lt", d, **kw)),
    "places_lt": _already_long_tailed(
        lambda d, **kw: filelists.load_split_lists("places_lt", d, **kw)),
    "inat2018": _already_long_tailed(filelists.load_inat_json),
}


def get_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None, rho: float | None = None,
                profile: str | None = None, seed: int = 0, mu: float = 0.5,
                **kw: Any) -> Dataset:
  """The dataset called `name` (one of DATASETS), long-tailed as configured.

  Args:
    name: dataset name.
    data_dir: file or folder holding the data (default: the search path of the module
      docstring); for imagenet_lt / places_lt / inat2018, the split / annotation folder.
    cache_dir: decoded-array cache (default `$LTJAX_CACHE_DIR` or `~/.cache/ltjax`).
    rho: imbalance ratio (default DEFAULT_LONGTAIL; must be None for the file-list sets).
    profile: "exp" or "step" (default DEFAULT_LONGTAIL).
    seed: seed of the long-tailed subsample (recorded in meta).
    mu: minority fraction of the step profile.
    **kw: loader options: `source`, `use_cache`, `download` (CIFAR); `use_cache`
      (Fashion-MNIST); `split_seed` (digits); `data_seed` (toy2d); `image_root`,
      `class_names` (ImageNet-LT / Places-LT); `image_root` (iNaturalist).

  Returns:
    ArrayDataset (decoded) or FileListDataset (image paths for the grain pipeline).

  Raises:
    ValueError: unknown name (the message lists DATASETS) or bad long-tail arguments.
    FileNotFoundError: missing files, with how to get them.
  """
  if name not in _LOADERS:
    raise ValueError(f"Unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}.")
  return _LOADERS[name](data_dir=data_dir, cache_dir=cache_dir, rho=rho, profile=profile,
                        seed=seed, mu=mu, **kw)
