"""`get_dataset(name, ...)`: every dataset ltjax knows, by name.

| name             | returns         | sources                                                  |
|------------------|-----------------|----------------------------------------------------------|
| cifar10_lt       | ArrayDataset    | image-folder tar/dir, official python/binary archive, tfds |
| cifar100_lt      | ArrayDataset    | same, CIFAR-100 (fine labels)                             |
| cinic10_lt       | ArrayDataset    | CINIC-10.tar.gz or its train/valid/test folders           |
| svhn_lt          | ArrayDataset    | train_32x32.mat + test_32x32.mat, tfds svhn_cropped       |
| tiny_imagenet_lt | ArrayDataset    | tiny-imagenet-200.zip or its folder                       |
| fashion_mnist_lt | ArrayDataset    | the four IDX .gz files                                    |
| digits_lt        | ArrayDataset    | scikit-learn (embedded, no file)                          |
| toy2d            | ArrayDataset    | generated (CP-Mix appendix B.1), (N, 2) float32 features  |
| esc50_lt         | ArrayDataset    | the ESC-50 folder (meta/esc50.csv + audio/*.wav), int16   |
|                  |                 | (N, T) waveforms (`ltjax.data.esc50`)                     |
| imagenet_lt      | FileListDataset | ImageNet_LT_{train,test}.txt + image root                 |
| places_lt        | FileListDataset | Places_LT_{train,test}.txt + image root                   |
| inat2018         | FileListDataset | train2018.json / val2018.json + image root                |

Files are looked up in `data_dir` when given (a file or a folder), else in
`$LTJAX_DATA_DIR`, `../shared/data` relative to the working directory and to the
repository, and for Fashion-MNIST Debian's `/usr/share/datasets/fashion-mnist`; each
folder is searched with its dataset subfolders (`cifar10_jpg`, `fashion_mnist`, ...).
Decoded files are cached (`ltjax.data._io.cached`); plain directories are decoded every
time. The first eight and esc50_lt are made long-tailed by `make_longtail` (training split only);
ImageNet-LT, Places-LT and iNaturalist are long-tailed already.

ESC-50-LT (LOBM sec. 4.1): one ESC-50 fold (8 clips per class) is the validation set, the
other 32 clips per class are subsampled by the Pareto profile n_i = floor(32 (i + 1) ^
(-ln(rho) / ln 50)), rho = 10 by default (the paper's ratio; counts 32 down to 3).

CINIC-10-LT, SVHN-LT and Tiny-ImageNet-LT are the MAMix paper's further benchmarks
(sec. 4.1, Tables 3, 4, 11, 13, 14): exponential profile, rho = 100 by default (the
tables' first column; they also report 50 and 10, CINIC-10 200 to 300, and the step
profile with mu = 0.5), head-class size the smallest training class (9,000 CINIC-10;
4,659, the digit 9, SVHN; 500 Tiny-ImageNet). TFDS has SVHN only (`svhn_cropped`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from ltjax.data import (cifar, cinic, esc50, filelists, idx, image_folder, small, svhn,
                        tiny_imagenet)
from ltjax.data._io import Arrays, cached
from ltjax.data.dataset import ArrayDataset, Dataset, make_longtail

DATASETS = ("cifar10_lt", "cifar100_lt", "cinic10_lt", "svhn_lt", "tiny_imagenet_lt",
            "fashion_mnist_lt", "digits_lt", "toy2d", "imagenet_lt", "places_lt", "inat2018",
            "esc50_lt")
# (profile, rho) used when get_dataset is called without them.
DEFAULT_LONGTAIL = {"cifar10_lt": ("exp", 100.0), "cifar100_lt": ("exp", 100.0),
                    "fashion_mnist_lt": ("exp", 100.0), "digits_lt": ("exp", 10.0),
                    "toy2d": ("step", 20.0), "cinic10_lt": ("exp", 100.0),
                    "svhn_lt": ("exp", 100.0), "tiny_imagenet_lt": ("exp", 100.0),
                    "esc50_lt": ("pareto", 10.0)}
CIFAR_SOURCES = ("auto", "folder", "archive", "tfds")
SVHN_SOURCES = ("files", "tfds")
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


def _find_source(data_dir, subdirs: Sequence[str], files: Sequence[str],
                 is_tree: Callable[[pathlib.Path], bool]) -> pathlib.Path | None:
  """The first archive named in `files`, or folder passing `is_tree`, in the search path;
  data_dir itself when it is a file."""
  if data_dir is not None and pathlib.Path(data_dir).is_file():
    return pathlib.Path(data_dir)
  for d in search_dirs(data_dir, subdirs):
    found = next((d / f for f in files if (d / f).is_file()), None)
    if found is not None or is_tree(d):
      return found or d
  return None


def _not_found(title: str, looked_for: Sequence[str], dirs: Sequence[pathlib.Path],
               how_to_get: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{title} not found: looked for {list(looked_for)} in {', '.join(map(str, dirs))}. "
      f"Get {how_to_get}; put it in one of these folders, pass data_dir=, or set "
      "LTJAX_DATA_DIR.")


_CINIC_SUBDIRS = ("cinic10", "CINIC-10", "cinic-10")
_CINIC_HOW = f"{cinic.CINIC10_ARCHIVE} from {cinic.CINIC10_URL} (or its unpacked folder)"


def load_cinic10(data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, eval_split: str = "test",
                 use_cache: bool = True) -> ArrayDataset:
  """Balanced CINIC-10, uint8 (N, 32, 32, 3): `train/` and `eval_split` ("test"/"valid").

  Raises:
    FileNotFoundError: neither CINIC-10.tar.gz nor a train/valid/test folder found.
    DataError: a corrupt archive or image.
  """
  is_tree = lambda d: all((d / s).is_dir() for s in ("train", "valid", "test"))
  path = _find_source(data_dir, _CINIC_SUBDIRS, [cinic.CINIC10_ARCHIVE], is_tree)
  if path is None:
    raise _not_found("CINIC-10", [cinic.CINIC10_ARCHIVE, "train/ valid/ test/"],
                     search_dirs(data_dir, _CINIC_SUBDIRS), _CINIC_HOW)
  return _decoded(f"cinic10-{eval_split}", path,
                  lambda: cinic.load_cinic_arrays(path, eval_split), "cinic10", cache_dir,
                  use_cache, _CINIC_HOW)


_SVHN_SUBDIRS = ("svhn", "SVHN")
_SVHN_HOW = (f"{' and '.join(svhn.SVHN_FILES)} from {svhn.SVHN_URL}, or `pip install "
             f"ltjax[tfds]` and source='tfds' ({svhn.TFDS_NAME})")


def load_svhn(data_dir: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None, source: str = "files",
              use_cache: bool = True, download: bool = False) -> ArrayDataset:
  """Balanced-split SVHN (uint8 (N, 32, 32, 3), label k = digit k) from the .mat files or tfds.

  Args:
    data_dir: the folder of train_32x32.mat and test_32x32.mat (or a folder to search).
    cache_dir: decoded-array cache.
    source: "files" (official .mat files) or "tfds" (`svhn_cropped`).
    use_cache: read / write the decoded-array cache.
    download: with source="tfds", let tfds download the data.

  Raises:
    FileNotFoundError: a .mat file is missing; the message names both and the URL.
    ImportError: source="tfds" without tensorflow-datasets.
  """
  if source not in SVHN_SOURCES:
    raise ValueError(f"Unknown SVHN source {source!r}; valid: {', '.join(SVHN_SOURCES)}.")
  if source == "tfds":
    arrays = cifar.load_tfds_arrays(svhn.TFDS_NAME, data_dir, download)
    return _array_dataset(arrays, {"source": "tfds", "format": "tfds", "kind": "images"})
  dirs = search_dirs(data_dir, _SVHN_SUBDIRS)
  found = next((d for d in dirs if all((d / f).is_file() for f in svhn.SVHN_FILES)), None)
  if found is None:
    raise _not_found("SVHN", svhn.SVHN_FILES, dirs, _SVHN_HOW)
  sources = [found / f for f in svhn.SVHN_FILES]
  arrays, info = cached("svhn", sources, lambda: svhn.load_svhn_arrays(*sources),
                        cache_dir=cache_dir, use_cache=use_cache, how_to_get=_SVHN_HOW)
  return _array_dataset(arrays, {"source": str(found), "format": "mat", "kind": "images",
                                 **info})


_TINY_SUBDIRS = ("tiny_imagenet", tiny_imagenet.TINY_IMAGENET_FOLDER)
_TINY_HOW = (f"{tiny_imagenet.TINY_IMAGENET_ARCHIVE} from {tiny_imagenet.TINY_IMAGENET_URL} "
             "(or its unpacked folder)")


def load_tiny_imagenet(data_dir: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None,
                       use_cache: bool = True) -> ArrayDataset:
  """Balanced Tiny-ImageNet, uint8 (N, 64, 64, 3): `train/` and the labelled `val/`.

  Raises:
    FileNotFoundError: neither tiny-imagenet-200.zip nor an unpacked folder found.
    DataError: a corrupt archive or image, or inconsistent annotation files.
  """
  path = _find_source(data_dir, _TINY_SUBDIRS, [tiny_imagenet.TINY_IMAGENET_ARCHIVE],
                      lambda d: (d / "wnids.txt").is_file())
  if path is None:
    raise _not_found("Tiny-ImageNet", [tiny_imagenet.TINY_IMAGENET_ARCHIVE,
                                       f"{tiny_imagenet.TINY_IMAGENET_FOLDER}/wnids.txt"],
                     search_dirs(data_dir, _TINY_SUBDIRS), _TINY_HOW)
  return _decoded("tiny_imagenet", path,
                  lambda: tiny_imagenet.load_tiny_imagenet_arrays(path), "tiny_imagenet",
                  cache_dir, use_cache, _TINY_HOW)


_ESC50_SUBDIRS = ("ESC-50-master", "ESC-50", "esc50")


def load_esc50(data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, sample_rate: int = 16000,
               val_fold: int = 1, trim: bool = True, use_cache: bool = True) -> ArrayDataset:
  """ESC-50 as int16 (N, T) waveforms at `sample_rate`: the training pool (folds other than
  `val_fold`, 32 clips per class) and the validation fold (8 per class), `ltjax.data.esc50`.

  Args:
    data_dir: the ESC-50 folder (holding meta/esc50.csv and audio/), or a folder to search.
    cache_dir: decoded-array cache (decoding and resampling 2,000 clips takes a minute).
    sample_rate: 16000 (EnvNet) or 44100 (EnvNet-v2); files at another rate are resampled.
    val_fold: ESC-50 fold held out for validation (1..5).
    trim: remove leading / trailing zero samples (the BC-learning preparation).
    use_cache: read / write the cache.

  Raises:
    FileNotFoundError: no folder with meta/esc50.csv and audio/, or a listed clip missing.
    DataError: a bad CSV or WAV file.
  """
  dirs = search_dirs(data_dir, _ESC50_SUBDIRS)
  root = next((d for d in dirs if esc50.is_esc50_folder(d)), None)
  if root is None:
    raise FileNotFoundError(
        f"ESC-50 not found: looked for {'/'.join(esc50.CSV_PATH)} and {esc50.AUDIO_DIR}/ "
        f"(the *.wav clips) in {', '.join(map(str, dirs))}. Get {esc50.ESC50_URL}, unpack "
        "it and pass its folder as data_dir= (--config.dataset.data_dir=...), or set "
        "LTJAX_DATA_DIR.")
  esc50.split_by_fold(np.array([val_fold]), val_fold)  # validates val_fold before decoding
  csv_path = root.joinpath(*esc50.CSV_PATH)
  rows, _ = esc50.read_metadata(csv_path)
  sources = [csv_path] + [root / esc50.AUDIO_DIR / name for name, _, _ in rows]
  missing = [str(p) for p in sources if not p.is_file()]
  if missing:
    raise FileNotFoundError(f"{len(missing)} clips listed in {csv_path} are missing, e.g. "
                            f"{missing[0]}; the ESC-50 folder needs every clip in "
                            f"{esc50.AUDIO_DIR}/ ({esc50.ESC50_URL}).")
  build = lambda: esc50.load_esc50_arrays(root, sample_rate, val_fold, trim)
  arrays, info = cached(f"esc50-{sample_rate}hz-fold{val_fold}-{'trim' if trim else 'raw'}",
                        sources, build, cache_dir=cache_dir, use_cache=use_cache,
                        how_to_get=esc50.ESC50_URL)
  return _array_dataset(arrays, {"source": str(root), "format": "esc50", "kind": "waveform",
                                 "sample_rate": int(sample_rate), "val_fold": int(val_fold),
                                 "trim": bool(trim), **info})


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
    "cinic10_lt": _long_tailed(load_cinic10, "cinic10_lt"),
    "svhn_lt": _long_tailed(load_svhn, "svhn_lt"),
    "tiny_imagenet_lt": _long_tailed(load_tiny_imagenet, "tiny_imagenet_lt"),
    "fashion_mnist_lt": _long_tailed(load_fashion_mnist, "fashion_mnist_lt"),
    "digits_lt": _long_tailed(_without_files(small.digits), "digits_lt"),
    "toy2d": _long_tailed(_without_files(small.toy2d), "toy2d"),
    "esc50_lt": _long_tailed(load_esc50, "esc50_lt"),
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
    profile: "exp", "step" or "pareto" (default DEFAULT_LONGTAIL).
    seed: seed of the long-tailed subsample (recorded in meta).
    mu: minority fraction of the step profile.
    **kw: loader options: `source`, `use_cache`, `download` (CIFAR, SVHN: source "files"
      or "tfds"); `eval_split` ("test" or "valid", CINIC-10); `use_cache` (CINIC-10,
      Tiny-ImageNet, Fashion-MNIST); `split_seed` (digits); `data_seed` (toy2d);
      `sample_rate`, `val_fold`, `trim`, `use_cache` (ESC-50); `image_root`,
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
