"""experiments.train on a large-dataset config, streamed from generated image files.

A synthetic iNaturalist-2018-style folder (train2018.json / val2018.json in COCO style,
JPEG files, exponential class counts) stands in for the real one; the inat2018 config's
stream reads it with small crops. Every registered method trains an epoch through the
experiment runner from it (clean batches only, law slots, the class bank, the epoch
subset, dual branches, the fine-tuning phase).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("grain")

from experiments import compare, runner  # noqa: E402
from ltjax import methods, reporting  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = (20, 12, 8, 5, 4, 3)


def write_inat(root, counts=COUNTS, test_per_class=3):
  """An iNaturalist-2018-style annotation folder with JPEG images under root."""
  rng = np.random.default_rng(0)
  categories = [{"id": 100 + k, "name": f"species{k}"} for k in range(len(counts))]
  for split, per_class in (("train2018", counts), ("val2018", [test_per_class] * len(counts))):
    images, annotations = [], []
    for k, n in enumerate(per_class):
      for i in range(n):
        name = f"{split}/{k}/{i}.jpg"
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        pixels = rng.integers(0, 256, 3) + rng.normal(0, 25, (22, 26, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(root, name))
        images.append({"id": len(images), "file_name": name})
        annotations.append({"image_id": images[-1]["id"], "category_id": 100 + k})
    with open(os.path.join(root, f"{split}.json"), "w") as f:
      json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  return root


@pytest.fixture(scope="module")
def inat_dir(tmp_path_factory):
  return str(write_inat(tmp_path_factory.mktemp("inat")))


def config_for(method, data_dir, **inputs):
  """The inat2018 config (quick, 8 epochs) on `data_dir`, with small crops, no workers."""
  module = compare.load_config_module(os.path.join(REPO, "experiments", "configs",
                                                   "inat2018.py"))
  config = module.get_config(f"method={method},quick=True,epochs=8")
  with config.unlocked():
    config.dataset.data_dir = data_dir
    config.input.update(dict(train_size=16, eval_resize=18, eval_size=16, worker_count=0,
                             **inputs))
    config.batch_size = 8
    config.progress = False
  return config


@pytest.mark.parametrize("method", methods.METHODS)
def test_inat_config_trains_from_the_stream(method, inat_dir, tmp_path):
  config = config_for(method, inat_dir)
  assert config.input.pipeline == "stream" and config.normalize == "imagenet"
  results = runner.run(config, str(tmp_path / method), stop_after=1, log=lambda _: None)
  assert results["final"]["top1"] is not None
  rows = reporting.read_metrics(str(tmp_path / method))
  assert rows and np.isfinite(rows[-1]["train/loss"])
  info = reporting.read_json(str(tmp_path / method / "dataset.json"))
  assert info["train_counts"] == list(COUNTS) and info["image_shape"] == [16, 16, 3]
  # The method views that need no training images (OTmix's pair statistics redraw them).
  view = results["extra"]["method_view"]
  expected = {"lobm": "label_occurrence", "dbn_mix": "temperatures",
              "cp_mix": "cp_confusion_counts"}.get(method)
  if expected:
    assert expected in view, sorted(view)
  if method == "otmix":
    assert "pair_counts" not in view


def test_streamed_run_resumes_from_its_checkpoint(inat_dir, tmp_path):
  workdir = str(tmp_path / "erm")
  config = config_for("erm", inat_dir)
  with config.unlocked():
    config.eval_every = 2
  assert runner.run(config, workdir, stop_after=1, log=lambda _: None) is None
  resumed = runner.run(config, workdir, stop_after=2, log=lambda _: None)
  uninterrupted = runner.run(config, str(tmp_path / "whole"), stop_after=2, log=lambda _: None)
  assert resumed["final"]["top1"] == uninterrupted["final"]["top1"]
  np.testing.assert_allclose(
      [r["train/loss"] for r in reporting.read_metrics(workdir)],
      [r["train/loss"] for r in reporting.read_metrics(str(tmp_path / "whole"))], rtol=1e-6)


def test_a_file_list_dataset_needs_the_stream(inat_dir):
  config = config_for("erm", inat_dir, pipeline="device")
  with pytest.raises(runner.UserError, match="input.pipeline=stream"):
    runner.load_dataset(config)


def _jpeg(rng) -> bytes:
  buffer = io.BytesIO()
  pixels = rng.integers(0, 256, 3) + rng.normal(0, 25, (22, 26, 3))
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG")
  return buffer.getvalue()


def test_imagenet_lt_trains_from_tfds_records_named_by_its_split_files(tmp_path, monkeypatch):
  """`dataset.images=tfds`: the split files select TFDS imagenet2012 records by file name
  (a fake `tfds.data_sources` here: the records of both splits, in another order, with
  records the split files do not name), and no image file is read."""
  from ltjax.data import filelists, tfds_source
  rng = np.random.default_rng(0)
  counts, splits, lines = (6, 3, 2, 1), {"train": [], "validation": []}, {}
  for split, file, per_class in (("train", "ImageNet_LT_train.txt", counts),
                                 ("validation", "ImageNet_LT_test.txt", (2,) * 4)):
    names = [(f"n{k:08d}_{i}_{split}.JPEG", k) for k, n in enumerate(per_class)
             for i in range(n)]
    lines[file] = "".join(f"{split}/n{k:08d}/{name} {k}\n" for name, k in names)
    records = [{"image": _jpeg(rng), "file_name": name.encode(), "label": np.int64(k)}
               for name, k in names + [(f"unused_{split}_{i}.JPEG", 9) for i in range(3)]]
    splits[split] = records[::-1]
  for file, text in lines.items():
    (tmp_path / file).write_text(text)
  opened = []

  def fake_data_source(name, split, *, data_dir=None, **_):
    opened.append((name, split))
    return splits[split]

  monkeypatch.setattr(tfds_source, "tfds_data_source", fake_data_source)
  # A 4-class ImageNet-LT (every class of a training set needs an image).
  monkeypatch.setitem(filelists.SPLIT_FILES, "imagenet_lt",
                      ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt", 4))
  module = compare.load_config_module(os.path.join(REPO, "experiments", "configs",
                                                   "imagenet_lt.py"))
  config = module.get_config("method=erm,quick=True,epochs=2")
  with config.unlocked():
    config.dataset.data_dir = str(tmp_path)
    config.dataset.images = "tfds"
    config.input.update(dict(train_size=16, eval_resize=18, eval_size=16, worker_count=0))
    config.batch_size = 4
    config.progress = False
  results = runner.run(config, str(tmp_path / "run"), stop_after=1, log=lambda _: None)
  assert results["final"]["top1"] is not None
  assert opened == [("imagenet2012", "train"), ("imagenet2012", "validation")]
  info = reporting.read_json(str(tmp_path / "run" / "dataset.json"))
  assert info["train_counts"] == list(counts) and info["test_counts"] == [2] * 4
  with config.unlocked():
    config.dataset.images = "bucket"
  with pytest.raises(runner.UserError, match="valid: files, tfds"):
    runner.load_dataset(config)
