"""Tests of the grain pipeline: class laws, resumption, sharding, transforms."""

from __future__ import annotations

import math

import grain
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from ltjax.data import DataError, FileListDataset, pipeline

COUNTS = np.array([40, 16, 6, 2])


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """A long-tailed on-disk image folder: root/<class>/<i>.png, 8x8 RGB, label list."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  paths, labels, images = [], [], []
  for k, n in enumerate(COUNTS):
    (root / f"c{k}").mkdir()
    for i in range(n):
      image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      path = root / f"c{k}" / f"{i}.png"
      Image.fromarray(image).save(path)
      paths.append(str(path))
      labels.append(k)
      images.append(image)
  return paths, np.array(labels, np.int32), np.stack(images)


def _reference_probs(name: str, counts: np.ndarray, gamma: float, r: float) -> np.ndarray:
  """float64 transcription of the class laws of SPEC section 2."""
  c = counts.astype(np.float64)
  w = {"instance": c, "class_balanced": np.ones_like(c),
       "reverse": (c.max() / c) ** (1 / gamma), "inverse_power": c ** -r}[name]
  return w / w.sum()


@pytest.mark.parametrize("name,gamma,r", [("instance", math.inf, 1.0),
                                          ("class_balanced", math.inf, 1.0),
                                          ("reverse", 1.0, 1.0),
                                          ("inverse_power", math.inf, 0.5)])
def test_sampler_class_law_chi_square(image_files, name, gamma, r):
  _, labels, _ = image_files
  sampler = pipeline.ClassLawSampler(labels, 4, name, seed=7, gamma=gamma, r=r)
  keys = np.array([sampler[i].record_key for i in range(4000)])
  observed = np.bincount(labels[keys], minlength=4)
  expected = 4000 * _reference_probs(name, COUNTS, gamma, r)
  assert stats.chisquare(observed, expected).pvalue > 1e-3
  # Inside a class the image is uniform.
  inside = keys[labels[keys] == 0]
  assert stats.chisquare(np.bincount(inside, minlength=40)).pvalue > 1e-3


def test_sampler_is_a_function_of_seed_and_index(image_files):
  _, labels, _ = image_files
  a = pipeline.ClassLawSampler(labels, 4, "reverse", seed=1, gamma=1.0)
  b = pipeline.ClassLawSampler(labels, 4, "reverse", seed=1, gamma=1.0)
  c = pipeline.ClassLawSampler(labels, 4, "reverse", seed=2, gamma=1.0)
  order = [57, 3, 1000, 3]
  assert [a[i].record_key for i in order] == [b[i].record_key for i in reversed(order)][::-1]
  assert a[5].rng.random() == b[5].rng.random()
  assert [a[i].record_key for i in range(50)] != [c[i].record_key for i in range(50)]
  bounded = pipeline.ClassLawSampler(labels, 4, seed=0, num_records=10)
  assert len(bounded) == 10
  with pytest.raises(IndexError):
    bounded[10]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match="Unknown sampler"):
    pipeline.ClassLawSampler(labels, 4, "square")
  with pytest.raises(ValueError, match="seed"):
    pipeline.ClassLawSampler(labels, 4, seed=-1)


def test_loader_frequencies_match_sampler(image_files):
  paths, labels, images = image_files
  source = pipeline.ImageFileSource(paths, labels)
  sampler = pipeline.ClassLawSampler(labels, 4, "class_balanced", seed=3)
  loader = pipeline.make_loader(source, sampler, batch_size=20)
  batches = [batch for _, batch in zip(range(40), loader)]
  got = np.concatenate([b["label"] for b in batches])
  assert stats.chisquare(np.bincount(got, minlength=4)).pvalue > 1e-3
  first = batches[0]
  assert first["image"].shape == (20, 8, 8, 3) and first["image"].dtype == np.uint8
  np.testing.assert_array_equal(first["image"], images[first["index"]])
  np.testing.assert_array_equal(first["index"], [sampler[i].record_key for i in range(20)])


def test_resume_from_saved_state(image_files):
  paths, labels, _ = image_files
  source = pipeline.ImageFileSource(paths, labels)
  sampler = pipeline.ClassLawSampler(labels, 4, "inverse_power", seed=11)
  loader = pipeline.make_loader(source, sampler, batch_size=6,
                                transforms=pipeline.train_transforms(6))
  iterator = iter(loader)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  resumed = iter(pipeline.make_loader(source, sampler, batch_size=6,
                                      transforms=pipeline.train_transforms(6)))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(got[key], want[key])


def test_two_hosts_get_disjoint_interleaved_streams(image_files):
  paths, labels, _ = image_files
  source = pipeline.ImageFileSource(paths, labels)
  sampler = pipeline.ClassLawSampler(labels, 4, "reverse", seed=5, gamma=2.0)
  hosts = [pipeline.make_loader(source, sampler, batch_size=4, shard_index=h, shard_count=2)
           for h in range(2)]
  streams = [np.concatenate([b["index"] for _, b in zip(range(3), host)]) for host in hosts]
  for h, stream in enumerate(streams):  # host h reads global records h, h + 2, ...
    np.testing.assert_array_equal(stream, [sampler[h + 2 * i].record_key for i in range(12)])
  # Without replacement (grain's shuffled IndexSampler): hosts split one epoch exactly.
  epoch = grain.samplers.IndexSampler(len(source), shuffle=True, num_epochs=1, seed=0)
  halves = [np.concatenate([b["index"] for b in pipeline.make_loader(
      source, epoch, batch_size=8, shard_index=h, shard_count=2)]) for h in range(2)]
  assert set(halves[0]).isdisjoint(halves[1])
  assert sorted(np.concatenate(halves)) == list(range(len(source)))
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_loader(source, sampler, batch_size=4, shard_index=2, shard_count=2)


def test_transforms_shapes_and_determinism():
  rng = np.random.default_rng(0)
  element = {"image": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "label": 1}
  crop = pipeline.RandomResizedCrop(12)
  out = crop.random_map(element, np.random.default_rng(4))
  assert out["image"].shape == (12, 12, 3) and out["label"] == 1
  again = crop.random_map(element, np.random.default_rng(4))
  np.testing.assert_array_equal(out["image"], again["image"])
  flip = pipeline.RandomHorizontalFlip(p=1.0).random_map(element, np.random.default_rng(0))
  np.testing.assert_array_equal(flip["image"], element["image"][:, ::-1])
  # Jitter with zero strength is the identity.
  same = pipeline.ColorJitter(0, 0, 0).random_map(element, np.random.default_rng(0))
  np.testing.assert_array_equal(same["image"], element["image"])
  # Saturation only: x' = f x + (1 - f) grey(x), f ~ U[0, 2], grey = ITU-R 601-2 luma.
  jittered = pipeline.ColorJitter(0, 0, 1.0).random_map(element, np.random.default_rng(1))
  reference_rng = np.random.default_rng(1)
  reference_rng.permutation(3)
  f = reference_rng.uniform(0.0, 2.0)
  x = element["image"].astype(np.float64)
  grey = x @ np.array([0.299, 0.587, 0.114])
  expected = np.clip(f * x + (1 - f) * grey[..., None], 0, 255)
  np.testing.assert_allclose(jittered["image"], expected, atol=1.0)
  # Brightness only: x' = f x.
  bright = pipeline.ColorJitter(0.5, 0, 0).random_map(element, np.random.default_rng(2))
  reference_rng = np.random.default_rng(2)
  reference_rng.permutation(3)
  f = reference_rng.uniform(0.5, 1.5)
  np.testing.assert_allclose(bright["image"], np.clip(f * x, 0, 255), atol=1.0)
  # Short side 20 -> 16 (Pillow bilinear, 30 -> 24), then the central 12 x 12.
  center = pipeline.ResizeCenterCrop(16, 12).map(element)
  resized = np.asarray(Image.fromarray(element["image"]).resize((24, 16), Image.BILINEAR))
  np.testing.assert_array_equal(center["image"], resized[2:14, 6:18])


def test_source_errors_and_filelist_source(tmp_path, image_files):
  paths, labels, images = image_files
  ds = FileListDataset(tuple(paths), labels, tuple(paths[:2]), labels[:2], ("a", "b", "c", "d"))
  source = pipeline.source_for(ds, "test")
  assert len(source) == 2
  np.testing.assert_array_equal(source[1]["image"], images[1])
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG truncated")
  with pytest.raises(DataError, match="broken.png"):
    pipeline.ImageFileSource([str(broken)], np.zeros(1, np.int32))[0]  # pylint: disable=expression-not-assigned
  with pytest.raises(DataError, match="missing.png"):
    pipeline.ImageFileSource([str(tmp_path / "missing.png")], np.zeros(1, np.int32))[0]  # pylint: disable=expression-not-assigned


def test_resize_random_crop_is_a_window_of_the_resized_image():
  """Every crop is a size x size window of the (resize x resize) Pillow bilinear resize,
  and its position is uniform over the possible offsets."""
  image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
  resized = np.asarray(Image.fromarray(image).resize((12, 12), Image.BILINEAR))
  crop = pipeline.ResizeRandomCrop(12, 8)
  offsets = []
  for seed in range(300):
    out = crop.random_map({"image": image}, np.random.default_rng(seed))["image"]
    assert out.shape == (8, 8, 3)
    hits = [(t, l) for t in range(5) for l in range(5)
            if np.array_equal(resized[t:t + 8, l:l + 8], out)]
    assert hits
    offsets.append(hits[0])
  tops = np.bincount([t for t, _ in offsets], minlength=5)
  assert stats.chisquare(tops).pvalue > 1e-3
  with pytest.raises(ValueError, match="must be <= resize"):
    pipeline.ResizeRandomCrop(8, 12)
