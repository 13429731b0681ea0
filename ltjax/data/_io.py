"""File plumbing shared by the dataset sources: errors, sha256 checks and the .npz cache.

Decoded small datasets are cached as uint8 `.npz` files in a cache directory (argument,
else `$LTJAX_CACHE_DIR`, else `~/.cache/ltjax`). A cache entry is named after the
source file(s) and the sha256 of their bytes, so a changed source never hits a stale
entry; entries are written to a temporary file and moved into place with `os.replace`,
so a crashed or concurrent writer never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import zipfile
from typing import Callable, Mapping, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]

# sha256 of the offline copies in ../shared/data (its SHA256SUMS), by "folder/file name";
# a folder spelled with "-" (Debian's /usr/share/datasets/fashion-mnist) matches too.
KNOWN_SHA256: Mapping[str, str] = {
    "cifar10_jpg/cifar10_jpg.tar.gz":
        "0bfcb68717a0ecb0d51ed61034906a773d48d424d94b766a46d7d1c55702a4d9",
    "fashion_mnist/t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "fashion_mnist/t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "fashion_mnist/train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "fashion_mnist/train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}


def known_sha256(path: str | os.PathLike) -> str | None:
  """The known sha256 of a shared data file, by its folder and file name; else None."""
  path = pathlib.Path(path)
  return KNOWN_SHA256.get(f"{path.parent.name.replace('-', '_')}/{path.name}")


class DataError(ValueError):
  """A dataset file exists but cannot be used (corrupt, truncated, wrong layout)."""


class ChecksumError(DataError):
  """A dataset file's sha256 differs from the known one."""


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """`cache_dir`, else `$LTJAX_CACHE_DIR`, else `~/.cache/ltjax`."""
  if cache_dir is not None:
    return pathlib.Path(cache_dir).expanduser()
  env = os.environ.get("LTJAX_CACHE_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "ltjax"


def sha256_file(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, actual: str, how_to_get: str) -> None:
  """Raises ChecksumError when `path` has a known sha256 (KNOWN_SHA256) that differs."""
  expected = known_sha256(path)
  if expected is not None and actual != expected:
    raise ChecksumError(
        f"Checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file "
        f"is corrupt or truncated; get a fresh copy ({how_to_get}).")


def require_file(path: str | os.PathLike, how_to_get: str) -> pathlib.Path:
  """Returns `path` as a Path, or raises FileNotFoundError saying how to get it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Dataset file {path} not found. {how_to_get}")
  return path


def _cache_key(name: str, sources: Sequence[pathlib.Path], digests: Sequence[str]) -> str:
  combined = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
  stem = "+".join(p.name for p in sources) if len(sources) == 1 else name
  return f"{stem}-{name}-{combined}.npz"


def _load_npz(path: pathlib.Path) -> Arrays | None:
  """Reads a cache entry; None (a miss) if it is unreadable."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return None


def _save_npz(path: pathlib.Path, arrays: Arrays) -> None:
  """Writes `arrays` to `path` atomically (temporary file in the same dir + os.replace)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def cached(name: str, sources: Sequence[str | os.PathLike], build: Callable[[], Arrays],
           *, cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
           how_to_get: str = "") -> tuple[Arrays, dict]:
  """Decoded arrays of `sources`, from the cache when present, else built and cached.

  Every source is hashed (sha256) and checked against KNOWN_SHA256 first, so a corrupt
  shared file is reported as such instead of failing somewhere in a decoder.

  Args:
    name: dataset name, part of the cache entry's file name.
    sources: the files the arrays are decoded from.
    build: decodes the sources; returns a dict of arrays (no object arrays).
    cache_dir: cache directory (see `default_cache_dir`).
    use_cache: False decodes every time and writes nothing.
    how_to_get: appended to checksum errors.

  Returns:
    (arrays, info) with info = {"sha256": {file name: digest}, "cache_file": path or None,
    "cache_hit": bool}.
  """
  paths = [pathlib.Path(s) for s in sources]
  digests = [sha256_file(p) for p in paths]
  for path, digest in zip(paths, digests):
    verify_sha256(path, digest, how_to_get)
  info = {"sha256": {p.name: d for p, d in zip(paths, digests)}, "cache_file": None,
          "cache_hit": False}
  if not use_cache:
    return build(), info
  entry = default_cache_dir(cache_dir) / _cache_key(name, paths, digests)
  info["cache_file"] = str(entry)
  arrays = _load_npz(entry) if entry.is_file() else None
  if arrays is not None:
    info["cache_hit"] = True
    return arrays, info
  arrays = build()
  _save_npz(entry, arrays)
  return arrays, info
