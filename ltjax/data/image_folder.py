"""Image-folder trees `<split>/<class>/<file>.{jpg,jpeg,png}`, from a directory or a tar.

The archive is read directly (`tarfile`, streaming, no extraction). Images are decoded
with Pillow, serially: on 2 cores a thread pool is slower for 32x32 JPEGs (the work per
image is mostly Python overhead holding the GIL) and all 60,000 CIFAR-10 JPEGs decode in
about 7 s plus 2-3 s of gunzip. Decode errors are reported with the member name.
"""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
import zlib
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from ltjax.data._io import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _split_member(name: str, splits: Sequence[str]) -> tuple[str, str] | None:
  """(split, class) of an image member `[./]split/class/file.ext`, else None."""
  parts = pathlib.PurePosixPath(name).parts
  parts = parts[1:] if parts and parts[0] == "." else parts
  if (len(parts) == 3 and parts[0] in splits
      and parts[2].lower().endswith(IMAGE_SUFFIXES)):
    return parts[0], parts[1]
  return None


def _iter_tar(path: pathlib.Path) -> Iterator[tuple[str, bytes]]:
  try:
    with tarfile.open(path, "r:*") as archive:
      for member in archive:
        if member.isfile():
          yield member.name, archive.extractfile(member).read()
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f"Cannot read archive {path}: {e}. The file is corrupt or truncated.") \
        from e


def _iter_dir(path: pathlib.Path) -> Iterator[tuple[str, bytes]]:
  for file in sorted(path.rglob("*")):
    if file.is_file():
      yield file.relative_to(path).as_posix(), file.read_bytes()


def decode_image(data: bytes, name: str, mode: str = "RGB", draft_size: int | None = None
                 ) -> np.ndarray:
  """Decodes encoded image bytes to a uint8 (H, W, C) array (Pillow).

  Args:
    data: the encoded file.
    name: the image's name, for error messages.
    mode: Pillow mode of the result ("RGB", "L").
    draft_size: None decodes at full size. Otherwise a JPEG is decoded at the strongest
      reduction of 1/2, 1/4 or 1/8 (libjpeg's DCT scaling, `PIL.Image.Image.draft`)
      that keeps its short side >= draft_size, for a fraction of a full decode's time;
      an image less than twice that size, and every other format, decodes at full size.

  Raises:
    DataError: naming `name`, when Pillow cannot decode the bytes.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      if draft_size is not None:
        image.draft(None, (draft_size, draft_size))  # size only: the mode stays the file's
      image.load()
      array = np.asarray(image if image.mode == mode else image.convert(mode))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DataError(f"Cannot decode image {name}: {e}") from e
  return array[..., None] if array.ndim == 2 else array


def _class_order(found: set[str], class_names: Sequence[str] | None,
                 source: pathlib.Path) -> tuple[str, ...]:
  if class_names is None:
    return tuple(sorted(found))
  if set(class_names) != found:
    raise DataError(f"Class folders in {source} do not match the expected classes: missing "
                    f"{sorted(set(class_names) - found)}, unexpected "
                    f"{sorted(found - set(class_names))}.")
  return tuple(class_names)


def read_image_folder(path: str | os.PathLike, class_names: Sequence[str] | None = None,
                      splits: Sequence[str] = ("train", "test"), mode: str = "RGB"
                      ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
  """Decodes every image of an image-folder tree.

  Args:
    path: a directory or a (compressed) tar holding `<split>/<class>/<image>` files.
    class_names: the label order; default the sorted folder names. When given, the
      folders must be exactly these classes.
    splits: the split folders to read.
    mode: Pillow mode the images are converted to ("RGB" or "L").

  Returns:
    ({split: (images uint8 (N, H, W, C), labels int32 (N,))}, class_names). Images are
    ordered by (label, path), so the result does not depend on the archive's member order.

  Raises:
    FileNotFoundError: `path` does not exist.
    DataError: unreadable archive, undecodable image, images of different sizes, a
      missing split, or class folders that differ from `class_names`.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Image folder or archive {path} not found.")
  members = _iter_dir(path) if path.is_dir() else _iter_tar(path)
  found = {}
  for name, data in members:
    key = _split_member(name, splits)
    if key is not None:
      found[name] = (key, data)
  classes = _class_order({c for (_, c), _ in found.values()}, class_names, path)
  label_of = {c: i for i, c in enumerate(classes)}
  result = {}
  for split in splits:
    names = sorted((n for n, ((s, _), _) in found.items() if s == split),
                   key=lambda n: (label_of[found[n][0][1]], n))
    if not names:
      raise DataError(f"No images under {split}/<class>/ in {path}.")
    images = [decode_image(found[n][1], f"{path}:{n}", mode) for n in names]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
      raise DataError(f"Images in {path}:{split} have different shapes {sorted(shapes)}.")
    labels = np.array([label_of[found[n][0][1]] for n in names], np.int32)
    result[split] = (np.stack(images), labels)
  return result, classes
