"""Tests of decoding at reduced size (JPEG draft mode) and of the pipeline's worker processes."""

from __future__ import annotations

import io

import grain
import numpy as np
import pytest
from PIL import Image

from ltjax.data import pipeline
from ltjax.data.image_folder import decode_image


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A photo-like uint8 RGB image: random colours, bicubically upsampled (no Pillow JPEG)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (max(1, height // 40), max(1, width // 40), 3), np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def _encode(image: np.ndarray, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, fmt, **kwargs)
  return buf.getvalue()


def _full_decode(data: bytes) -> np.ndarray:
  """The reference: Pillow's plain decode, no draft."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
  return _encode(_smooth_image(960, 1280), "JPEG", quality=95)


@pytest.mark.parametrize("draft_size,scale", [(224, 4), (240, 4), (241, 2), (480, 2),
                                              (100, 8)])
def test_draft_decodes_jpeg_at_reduced_size(large_jpeg, draft_size, scale):
  got = decode_image(large_jpeg, "large.jpg", draft_size=draft_size)
  # libjpeg scales by 1/2, 1/4 or 1/8: the largest reduction keeping the short side >= size.
  assert got.shape == (960 // scale, 1280 // scale, 3) and got.dtype == np.uint8
  assert draft_size <= min(got.shape[:2]) < 960
  # Content: the full decode, box-filtered down to the same size.
  reference = Image.fromarray(_full_decode(large_jpeg)).resize(got.shape[1::-1], Image.BOX)
  difference = np.abs(got.astype(np.float64) - np.asarray(reference))
  assert difference.mean() < 1.5
  # A wrong image (here the mirror image) is far off: the bound above is meaningful.
  assert np.abs(got[:, ::-1] - np.asarray(reference, np.float64)).mean() > 20


def test_draft_keeps_full_size_when_the_image_is_not_twice_as_large():
  data = _encode(_smooth_image(400, 500, seed=1), "JPEG", quality=90)
  np.testing.assert_array_equal(decode_image(data, "x.jpg", draft_size=224), _full_decode(data))
  np.testing.assert_array_equal(decode_image(data, "x.jpg"), _full_decode(data))


def test_draft_is_a_no_op_for_png_and_keeps_the_mode():
  image = _smooth_image(400, 480, seed=2)
  np.testing.assert_array_equal(decode_image(_encode(image, "PNG"), "x.png", draft_size=50),
                                image)
  grey = _encode(image[..., 0], "JPEG", quality=95)
  got = decode_image(grey, "grey.jpg", mode="L", draft_size=100)
  assert got.shape == (100, 120, 1)
  reference = Image.open(io.BytesIO(grey)).resize((120, 100), Image.BOX)
  assert np.abs(got[..., 0] - np.asarray(reference, np.float64)).mean() < 1.5


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory):
  """8 JPEG files of 96 x 128 px in two classes, and their labels."""
  root = tmp_path_factory.mktemp("jpegs")
  paths = []
  for i in range(8):
    path = root / f"{i}.jpg"
    path.write_bytes(_encode(_smooth_image(96, 128, seed=10 + i), "JPEG", quality=95))
    paths.append(str(path))
  return paths, np.array([0, 1] * 4, np.int32)


def test_image_file_source_draft_size(jpeg_files):
  paths, labels = jpeg_files
  full = pipeline.ImageFileSource(paths, labels)
  small = pipeline.ImageFileSource(paths, labels, draft_size=40)
  record = small[3]
  assert record["image"].shape == (48, 64, 3) and record["label"] == 1 and record["index"] == 3
  np.testing.assert_array_equal(full[3]["image"],
                                _full_decode(open(paths[3], "rb").read()))  # pylint: disable=consider-using-with
  assert "draft_size=40" in repr(small) and "draft" not in repr(full)
  with pytest.raises(ValueError, match="draft_size"):
    pipeline.ImageFileSource(paths, labels, draft_size=0)


def test_train_transforms_run_in_worker_processes(jpeg_files):
  paths, labels = jpeg_files
  source = pipeline.ImageFileSource(paths, labels, draft_size=40)
  sampler = pipeline.ClassLawSampler(labels, 2, "class_balanced", seed=4)

  def batches(workers: int) -> list[dict[str, np.ndarray]]:
    loader = pipeline.make_loader(source, sampler, batch_size=3, worker_count=workers,
                                  transforms=pipeline.train_transforms(32))
    return [b for _, b in zip(range(4), loader)]

  in_process, workers = batches(0), batches(2)
  # Batch j holds records 3j, 3j + 1, 3j + 2 wherever it is read, each augmented by its
  # own generator: worker processes change nothing.
  for j, (batch, alone) in enumerate(zip(workers, in_process)):
    np.testing.assert_array_equal(batch["index"],
                                  [sampler[3 * j + i].record_key for i in range(3)])
    assert batch["image"].shape == (3, 32, 32, 3) and batch["image"].dtype == np.uint8
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(batch[key], alone[key])
  record = source[sampler[4].record_key]  # record 4: batch 1, position 1
  np.testing.assert_array_equal(
      in_process[1]["image"][1],
      pipeline.apply_transforms(record, pipeline.train_transforms(32), sampler[4].rng)["image"])


def test_index_sampler_with_draft_source_is_one_epoch(jpeg_files):
  paths, labels = jpeg_files
  source = pipeline.ImageFileSource(paths, labels, draft_size=40)
  epoch = grain.samplers.IndexSampler(len(source), shuffle=True, num_epochs=1, seed=0)
  got = [b for b in pipeline.make_loader(source, epoch, batch_size=4,
                                         transforms=pipeline.train_transforms(32))]
  assert sorted(np.concatenate([b["index"] for b in got])) == list(range(8))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in got]),
                                labels[np.concatenate([b["index"] for b in got])])
