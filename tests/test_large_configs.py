"""The large configs (ImageNet-LT, Places-LT, iNaturalist 2018): streamed ImageNet-style
input, the papers' per-dataset protocols, and the TFDS subset source they can read from."""

from __future__ import annotations

import importlib
import io
import sys

import numpy as np
import pytest
from PIL import Image

from experiments.configs import common
from ltjax import methods
from ltjax.data import tfds_source
from ltjax.data._io import DataError

LARGE = ("imagenet_lt", "places_lt", "inat2018")
SMALL = ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "digits_lt")
KINDS = ("paper", "code")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)
OTMIX = ("otmix", "otmix_drw", "otmix_balms", "otmix_ldam", "otmix_saliency")
BILATERAL = ("dbn_mix", "sbn_mix")
RIDE_FAMILY = ("ride", "ride_ea", "ride_cmo", "otmix_ride", "cp_mix_ride")


def config(dataset: str, arg: str = ""):
  return importlib.import_module(f"experiments.configs.{dataset}").get_config(arg)


# ------------------------------------------------------------------ the papers' table
# (model, batch, epochs, lr, weight decay, crop, colour jitter), written from the papers:
# "rrc" RandomResizedCrop(224) (Kang et al. 2020 code, data/dataloader.py; OTmix code),
# "resize" resize to 256 x 256 + random 224 crop (DBN-Mix sec. 4.2; CP-Mix B.2.2).

def paper_row(dataset: str, method: str, kind: str) -> tuple:
  if method in RIDE_FAMILY and dataset != "places_lt":
    # RIDE configs config_imagenet_lt_resnet50_ride.json / config_iNaturalist_resnet50_ride.json
    # (100 epochs, wd 2e-4; batch 256 / 512, lr 0.1 / 0.2); its loaders' jitter (0.4 / none).
    if dataset == "imagenet_lt":
      return ("resnet50", 256, 100, 0.1, 2e-4, "rrc", 0.4)
    return ("resnet50", 512, 100, 0.2, 2e-4, "rrc", 0.0)
  if dataset == "imagenet_lt":
    # LOBM sec. 4.2 (ResNet-10, 90 epochs, lr 0.2), for its own rows and its baselines
    # rows of Table 2 (CB Samp., CB Samp.*).
    if method in ("lobm", "lobm_star", "cb_sampling", "drs"):
      return ("resnet10", 256, 90, 0.2, 2e-4, "rrc", 0.4)
    if method in BILATERAL:  # DBN-Mix sec. 4.2: ResNet-50, batch 256, lr 0.2, wd 2e-4
      return ("resnet50", 256, 90, 0.2, 2e-4, "resize", 0.0)
    if method == "cp_mix":  # CP-Mix Table 6 (ImageNet-LT column), B.2.2 jitter
      return ("resnet50", 192, 180, 0.1, 5e-4, "resize", 0.4)
    if method in OTMIX:  # OTmix sec. 5 (200 epochs, lr 0.1), appendix 7.4 (batch 128)
      return ("resnet50", 128, 200, 0.1, 2e-4, "rrc", 0.4)
    return ("resnet50", 256, 90, 0.2, 2e-4, "rrc", 0.4)  # DBN-Mix 4.2 standard schedule
  if dataset == "places_lt":  # CP-Mix Table 6 (Places-LT column), B.2.3 / B.3.3; Table 5:
    return ("resnet152", 128, 30, 0.01, 5e-4, "resize" if method == "cp_mix" else "rrc", 0.4)
  if method in BILATERAL:  # DBN-Mix 4.2: iNat lr 0.1, wd 1e-4, ImageNet-LT's augmentation
    return ("resnet50", 256, 200, 0.1, 1e-4, "resize", 0.0)
  if method == "cp_mix":  # CP-Mix Table 6 (iNaturalist column), B.3.4
    return ("resnet50", 256, 100, 0.1, 2e-4, "rrc", 0.0)
  if method in OTMIX:  # OTmix sec. 5 (210 epochs), 7.4 (batch 128); code opts.py wd 2e-4
    return ("resnet50", 128, 210, 0.1, 2e-4 if kind == "code" else 1e-4, "rrc", 0.0)
  return ("resnet50", 256, 200, 0.1, 1e-4, "rrc", 0.0)  # DBN-Mix 4.2; Kang et al.: no jitter


def observed_row(cfg) -> tuple:
  crop = {"random_resized": "rrc", "resize_random": "resize"}[cfg.input.crop]
  return (cfg.model.name, cfg.batch_size, cfg.num_epochs, cfg.optim.lr,
          cfg.optim.weight_decay, crop, cfg.input.jitter)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset", LARGE)
def test_per_dataset_protocol_matches_the_papers(dataset, kind):
  for name in methods.METHODS:
    cfg = config(dataset, f"method={name},protocol={kind}")
    assert observed_row(cfg) == paper_row(dataset, name, kind), (dataset, kind, name)


# ------------------------------------------------------------------ input section

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset", LARGE)
def test_every_method_resolves_with_streamed_imagenet_input(dataset, kind):
  for name in methods.METHODS:
    cfg = config(dataset, f"method={name},protocol={kind}")
    inp = cfg.input
    assert inp.pipeline == "stream", name
    assert (inp.train_size, tuple(inp.scale), inp.flip) == (224, (0.08, 1.0), True)
    assert tuple(inp.ratio) == pytest.approx((3 / 4, 4 / 3))
    assert (inp.eval_resize, inp.eval_size) == (256, 224)  # Kang et al. Resize + CenterCrop
    assert (inp.worker_count, inp.prefetch, inp.draft) == (8, 2, True)
    # No CIFAR pad-4 crop or on-device flip: augmentation is in the input pipeline.
    assert (cfg.augment.pad, cfg.augment.flip) == (0, False), name
    inat_code = dataset == "inat2018" and kind == "code" and name in OTMIX
    mean, std = (INAT_MEAN, INAT_STD) if inat_code else (IMAGENET_MEAN, IMAGENET_STD)
    assert cfg.normalize == ("inat2018" if inat_code else "imagenet"), name
    assert (tuple(inp.mean), tuple(inp.std)) == (mean, std), name
    assert cfg.model.pretrained is None and cfg.dataset.image_root is None


@pytest.mark.parametrize("dataset", LARGE)
def test_placeholders_take_a_path(dataset):
  cfg = config(dataset, "method=erm")
  cfg.model.pretrained = "/weights/resnet50.msgpack"  # what --config.model.pretrained does
  cfg.dataset.image_root = "/data/images"
  assert (cfg.model.pretrained, cfg.dataset.image_root) == ("/weights/resnet50.msgpack",
                                                            "/data/images")


@pytest.mark.parametrize("dataset", LARGE)
def test_quick_variant_uses_small_crops(dataset):
  cfg = config(dataset, "method=erm,quick=True")
  assert (cfg.input.pipeline, cfg.input.train_size, cfg.input.eval_size) == ("stream", 64, 64)
  assert cfg.input.eval_resize >= cfg.input.eval_size


@pytest.mark.parametrize("dataset", SMALL)
def test_small_configs_keep_the_device_path(dataset):
  cfg = config(dataset, "method=erm")
  assert cfg.input.to_dict() == {"pipeline": "device"}
  assert "pretrained" not in cfg.model


def test_docstrings_state_the_data_layout():
  for dataset, files in (("imagenet_lt", ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt")),
                         ("places_lt", ("Places_LT_train.txt", "Places_LT_test.txt")),
                         ("inat2018", ("train2018.json", "val2018.json"))):
    doc = importlib.import_module(f"experiments.configs.{dataset}").__doc__
    for text in files + ("dataset.data_dir", "dataset.image_root", "Data layout"):
      assert text in doc, (dataset, text)


# ------------------------------------------------------------------ TFDS subset source

def _png(value: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def _fake_imagenet(n: int = 6, encoded: bool = False) -> list[dict]:
  """What `tfds.data_sources("imagenet2012", "train")` yields: dicts per record."""
  return [{"image": _png(i) if encoded else np.full((4, 6, 3), i, np.uint8),
           "label": np.int64(100 + i), "file_name": f"n0144_{i}.JPEG".encode()}
          for i in range(n)]


def test_split_file_selects_the_named_records_with_the_files_labels(tmp_path):
  split = tmp_path / "ImageNet_LT_train.txt"
  split.write_text("train/n0144/n0144_4.JPEG 7\ntrain/n0144/n0144_1.JPEG 3\n"
                   "train/n0144/n0144_4.JPEG 7\n")
  source = tfds_source.split_file_source(split, _fake_imagenet())
  assert len(source) == 3
  records = [source[i] for i in range(3)]
  assert [int(r["image"][0, 0, 0]) for r in records] == [4, 1, 4]  # records 4, 1, 4
  assert [int(r["label"]) for r in records] == [7, 3, 7]  # the split file's labels
  assert [int(r["index"]) for r in records] == [0, 1, 2]  # position in the subset
  assert records[0]["image"].dtype == np.uint8 and records[0]["image"].shape == (4, 6, 3)


def test_encoded_images_are_decoded_and_labels_default_to_the_records():
  source = tfds_source.SubsetSource(_fake_imagenet(encoded=True), [5, 2])
  first = source[0]
  assert first["image"].shape == (4, 6, 3) and int(first["image"].max()) == 5
  assert int(first["label"]) == 105 and int(source[1]["label"]) == 102


def test_subset_errors_are_clear(tmp_path):
  names = tfds_source.name_index(_fake_imagenet())
  assert names["n0144_3.JPEG"] == 3
  with pytest.raises(DataError, match="val/ILSVRC2012_val_1.JPEG .* not in the TFDS"):
    tfds_source.subset_indices(["val/ILSVRC2012_val_1.JPEG"], names)
  duplicated = _fake_imagenet(2) + _fake_imagenet(1)
  with pytest.raises(DataError, match="Records 0 and 2 share"):
    tfds_source.name_index(duplicated)
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
    tfds_source.SubsetSource(_fake_imagenet(), [6])
  with pytest.raises(ValueError, match="labels and indices differ"):
    tfds_source.SubsetSource(_fake_imagenet(), [0, 1], np.array([0]))
  with pytest.raises(FileNotFoundError):
    tfds_source.split_file_source(tmp_path / "none.txt", _fake_imagenet())


def test_missing_tfds_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match=r"pip install 'ltjax\[tfds\]'"):
    tfds_source.tfds_data_source("imagenet2012", "train")


def test_subset_source_feeds_the_grain_loader(tmp_path):
  pipeline = pytest.importorskip("ltjax.data.pipeline")
  grain = pytest.importorskip("grain")
  source = tfds_source.SubsetSource(_fake_imagenet(), [0, 2, 4, 5], np.array([0, 1, 1, 0]))
  sampler = grain.samplers.IndexSampler(len(source), shuffle=False, num_epochs=1)
  batches = list(pipeline.make_loader(source, sampler, batch_size=2))
  assert [b["label"].tolist() for b in batches] == [[0, 1], [1, 0]]
  assert batches[0]["image"].shape == (2, 4, 6, 3)


def test_stream_input_defaults_are_the_documented_ones():
  assert common.STREAM_INPUT["mean"] == IMAGENET_MEAN
  assert common.STREAM_INPUT["std"] == IMAGENET_STD
  for field in common.STREAM_INPUT:
    assert f"input.{field}" in common.__doc__ or field in ("pipeline", "mean", "std"), field
