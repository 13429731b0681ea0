"""experiments/configs/esc50_lt.py: the BC-learning training settings LOBM follows, and a
few training steps of each net on a generated ESC-50-like folder (CPU, tiny EnvNets)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from esc50_fixtures import write_esc50
from experiments import compare, runner
from ltjax import reporting
from ltjax.training import schedules

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / "esc50_lt.py"


def config(arg=""):
  return compare.load_config_module(str(CONFIG)).get_config(arg)


# (net, method): epochs, milestones, lr, warm-up, rate, input length
EXPECTED = {
    ("envnet", "erm"): (600, (300, 450), 0.01, 0, 16000, 24014),
    ("envnet", "mixup"): (1200, (600, 900), 0.01, 0, 16000, 24014),
    ("envnet", "lobm"): (1200, (600, 900), 0.01, 0, 16000, 24014),
    ("envnetv2", "erm"): (1000, (300, 600, 900), 0.1, 10, 44100, 66650),
    ("envnetv2", "lobm"): (2000, (600, 1200, 1800), 0.1, 10, 44100, 66650),
    ("envnetv2", "lobm_star"): (2000, (600, 1200, 1800), 0.1, 10, 44100, 66650),
}


@pytest.mark.parametrize("kind", ["paper", "code"])
@pytest.mark.parametrize("net,method", sorted(EXPECTED))
def test_config_follows_the_bc_learning_settings(net, method, kind):
  cfg = config(f"method={method},net={net},protocol={kind}")
  epochs, milestones, lr, warmup, rate, length = EXPECTED[(net, method)]
  assert (cfg.num_epochs, tuple(cfg.schedule.milestones), cfg.optim.lr,
          cfg.schedule.warmup_epochs) == (epochs, milestones, lr, warmup)
  assert cfg.schedule.warmup_unit == "constant"
  np.testing.assert_allclose(cfg.schedule.factors, [0.1 ** (j + 1) for j in
                                                    range(len(milestones))])
  assert (cfg.batch_size, cfg.drop_last, cfg.optim.momentum, cfg.optim.nesterov,
          cfg.optim.weight_decay) == (64, False, 0.9, True, 5e-4)
  assert (cfg.model.name, cfg.dataset.sample_rate, cfg.augment.length) == (net, rate, length)
  assert (cfg.dataset.name, cfg.dataset.profile, cfg.dataset.rho, cfg.dataset.val_fold) == (
      "esc50_lt", "pareto", 10.0, 1)
  assert (cfg.augment.kind, cfg.augment.crops, cfg.normalize) == ("waveform", 10, "waveform")
  assert "bc_learning_sound" in cfg.source
  if method != "erm":
    assert (cfg.recipe.input_mix, cfg.recipe.sample_rate, cfg.recipe.alpha,
            cfg.recipe.per_sample_lambda) == ("bc", rate, 1.0, True)
    assert not cfg.recipe.get("clean_pass", False)
  if method == "lobm_star":
    assert cfg.recipe.defer_epoch == 600  # the first decay
  rcp = runner.build_recipe(cfg)
  assert rcp.name == method
  if method in ("erm", "mixup", "lobm"):
    assert "LOBM Table 2" in cfg.reproduces and net in cfg.reproduces
  else:
    assert cfg.reproduces.startswith("nothing")


def test_config_arguments_and_unsupported_methods():
  assert config("").model.name == "envnet" and config("").method == "erm"
  assert config("method=lobm,rho=20").dataset.rho == 20.0
  assert config("net=envnetv2,method=lobm").arg == "net=envnetv2,method=lobm"
  with pytest.raises(ValueError, match="net"):
    config("net=resnet")
  with pytest.raises(ValueError, match="raw waveforms"):
    config("method=otmix")


def test_constant_warmup_is_a_tenth_of_the_rate():
  s = schedules.warmup_multistep(0.1, 5, 10, (300,), warmup_unit="constant")
  lr = [float(s(e * 5)) for e in (0, 9, 10, 299, 300)]
  np.testing.assert_allclose(lr, [0.01, 0.01, 0.1, 0.1, 0.01], rtol=1e-6)


@pytest.fixture(scope="module")
def esc_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("esc") / "ESC-50-master"
  write_esc50(root, num_classes=4, rate=44100, length=34000)  # 0.77 s clips
  return root


# Input lengths long enough for the tiny quick nets (EnvNet-v2's pools need ~30,000).
@pytest.mark.parametrize("net,method,length", [("envnet", "lobm_star", 8000),
                                               ("envnetv2", "mixup", 32768)])
def test_quick_config_trains_a_few_steps(esc_folder, tmp_path, net, method, length):
  cfg = config(f"method={method},net={net},quick")
  with cfg.unlocked():
    cfg.dataset.data_dir = str(esc_folder)
    cfg.dataset.cache_dir = str(tmp_path / "cache")
    cfg.augment.length = length
    cfg.progress = False
    cfg.plots = False
    cfg.drop_last = True  # one compiled step
  results = runner.run(cfg, str(tmp_path / "run"), stop_after=1, log=lambda _: None)
  assert results["final"]["top1"] is not None
  rows = reporting.read_metrics(str(tmp_path / "run"))
  assert rows and np.isfinite(rows[-1]["train/loss"])


def test_clips_as_wide_as_the_input_are_refused(esc_folder):
  cfg = config("quick")
  with cfg.unlocked():
    cfg.augment.length = 5
  with pytest.raises(runner.UserError, match="alike"):
    runner.normalizer(cfg, np.zeros((3, 5), np.int16))
