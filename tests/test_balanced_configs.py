"""The balanced CIFAR configs (experiments/configs/cifar10.py, cifar100.py): OTmix Table 3.

EXPECTED is written from the OTmix paper (Gao et al., /work/shared/seeds/003_*.txt):
sec. 5.3 trains balanced CIFAR-10 / 100 "using the same details as on the CIFAR-LT", i.e.
sec. 5 "Implementation Details" (ResNet-32, 240 epochs, lr 0.1 decayed by 0.1, 0.1, 0.01 at
epochs 100, 160, 200, momentum 0.9, w = 0.05, eps = 0.01, r = 1, alpha = 4) with batch 128
and weight decay 2e-4 of its reference [1] (Cao et al. 2019); Table 3's errors: OTmix
(Cutmix) 5.8 / 28.0, OTmix (SaliencyMix) 5.1 / 21.7. The training tests run the `quick`
variant on a generated image folder in the CIFAR layout; the full-data test reads the
offline CIFAR-10 copy and is skipped without it.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from experiments import compare, runner
from ltjax import reporting

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
CIFAR10_JPG = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpg"
KINDS = ("paper", "code")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# Paper protocol: (epochs, milestones, cumulative factors, warm-up, batch, lr, wd, model).
EXPECTED_SCHEDULE = (240, (100, 160, 200), (0.1, 0.01, 1e-4), 0, 128, 0.1, 2e-4, "resnet32")
EXPECTED_RECIPE = {"alpha": 4.0, "w": 0.05, "epsilon": 0.01, "r": 1.0, "mu": 1.0}
TABLE_3 = {("cifar10", "otmix"): ("Cutmix", "5.8"), ("cifar10", "otmix_saliency"):
           ("SaliencyMix", "5.1"), ("cifar100", "otmix"): ("Cutmix", "28.0"),
           ("cifar100", "otmix_saliency"): ("SaliencyMix", "21.7")}
PLACEMENT = {"otmix": "uniform", "otmix_saliency": "saliency"}


def config(name, arg=""):
  return compare.load_config_module(str(CONFIGS / f"{name}.py")).get_config(arg)


def schedule_of(cfg):
  return (cfg.num_epochs, tuple(cfg.schedule.milestones), tuple(cfg.schedule.factors),
          cfg.schedule.warmup_epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay,
          cfg.model.name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset,method", sorted(TABLE_3))
def test_config_follows_the_papers_balanced_protocol(dataset, method, kind):
  cfg = config(dataset, f"method={method},protocol={kind}")
  assert cfg.dataset.name == f"{dataset}_lt" and cfg.dataset.rho == 1.0
  assert schedule_of(cfg) == EXPECTED_SCHEDULE and cfg.optim.momentum == 0.9
  assert cfg.recipe.box_placement == PLACEMENT[method]
  recipe = {k: cfg.recipe[k] for k in EXPECTED_RECIPE}
  if kind == "paper":
    assert recipe == EXPECTED_RECIPE
  else:  # the OTmix code's foreground weights 1 / n_k (r = 0): the same on balanced data
    assert recipe == {**EXPECTED_RECIPE, "r": 0.0} and cfg.recipe.mix_prob == 0.5
  mix, error = TABLE_3[(dataset, method)]
  assert f"OTmix ({mix})" in cfg.reproduces and f"error {error}" in cfg.reproduces
  rcp = runner.build_recipe(cfg)
  assert (rcp.name, rcp.box_placement, rcp.alpha) == (method, PLACEMENT[method], 4.0)


def test_defaults_and_the_other_methods():
  for dataset in ("cifar10", "cifar100"):
    cfg = config(dataset)
    assert (cfg.method, cfg.dataset.rho) == ("otmix", 1.0)
    erm = config(dataset, "method=erm")
    assert erm.dataset.rho == 1.0 and erm.reproduces.startswith("nothing")
  # CIFAR-100's per-method changes (DBN-Mix sec. 4.2 eta = 7; CP-Mix B.3.1 lr 0.5).
  assert config("cifar100", "method=dbn_mix").recipe.eta == 7.0
  assert config("cifar100", "method=cp_mix").finetune.lr == 0.5
  assert config("cifar10", "method=dbn_mix").recipe.eta == 3.0


# ----------------------------------------------------------------- a few training steps

def write_cifar_folder(root: pathlib.Path, classes, train: int, test: int) -> None:
  """`<root>/train|test/<class>/NNNN.png`, 32 x 32 RGB: a class-coloured block on noise."""
  rng = np.random.default_rng(0)
  for split, count in (("train", train), ("test", test)):
    for k, name in enumerate(classes):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        image = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
        r, c = rng.integers(0, 24, 2)
        image[r:r + 8, c:c + 8] = (37 * k % 256, 91 * k % 256, 200)
        Image.fromarray(image).save(folder / f"{i:04d}.png")


@pytest.mark.parametrize("dataset,method,classes,train", [
    ("cifar10", "otmix_saliency", CIFAR10_CLASSES, 8),
    ("cifar100", "otmix", tuple(f"c{k:03d}" for k in range(100)), 1),
])
def test_quick_config_trains_on_the_whole_balanced_set(dataset, method, classes, train,
                                                        tmp_path):
  write_cifar_folder(tmp_path / "data" / f"{dataset}_jpg", classes, train, 1)
  cfg = config(dataset, f"method={method},quick")
  with cfg.unlocked():
    cfg.dataset.data_dir = str(tmp_path / "data")
    cfg.progress = False
    cfg.batch_size = 32
  workdir = tmp_path / "run"
  results = runner.run(cfg, str(workdir), stop_after=1, log=lambda _: None)
  assert results["final"]["top1"] is not None
  rows = reporting.read_metrics(str(workdir))
  assert rows and np.isfinite(rows[-1]["train/loss"])
  info = reporting.read_json(str(workdir / "dataset.json"))
  assert info["train_counts"] == [train] * len(classes)  # rho = 1 keeps every image


@pytest.mark.skipif(not (CIFAR10_JPG / "cifar10_jpg.tar.gz").is_file(),
                    reason="needs the offline CIFAR-10 copy ../shared/data/cifar10_jpg "
                           "(see its README)")
def test_cifar10_config_loads_all_50000_training_images():
  cfg = config("cifar10", "method=otmix_saliency")
  with cfg.unlocked():
    cfg.dataset.data_dir = str(CIFAR10_JPG)
  ds = runner.load_dataset(cfg)
  np.testing.assert_array_equal(ds.train_counts, 5000)
  assert ds.train_labels.size == 50000 and ds.test_labels.size == 10000
  assert tuple(ds.class_names) == CIFAR10_CLASSES
  assert os.path.basename(ds.meta["source"]) == "cifar10_jpg.tar.gz"
