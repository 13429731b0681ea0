"""Tests for the experiment scripts (experiments/): configs, train, compare, evaluate.

The end-to-end tests run the real command lines as subprocesses on Digits-LT with the
`quick` SmallCNN variant shortened to 2-3 epochs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from experiments import compare, runner
from experiments.configs import common
from ltjax import reporting
from ltjax.methods import protocols

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments", "configs")
DIGITS = "experiments/configs/digits_lt.py"
CONFIG_FILES = ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "digits_lt", "imagenet_lt",
                "places_lt", "inat2018")
RUN_FILES = ("config.json", "dataset.json", "env.json", "metrics.jsonl", "results.json",
             "per_class_accuracy.png", "confusion.png")


def _python(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, timeout=timeout,
                        capture_output=True, text=True)


def _config(name, arg=None):
  return compare.load_config_module(os.path.join(CONFIGS, f"{name}.py")).get_config(arg)


def _epochs(workdir):
  return [row["epoch"] for row in reporting.read_metrics(workdir)]


# ---------------------------------------------------------------------------- configs

def test_parse_arg_types_flags_and_errors():
  args = common.parse_arg("method=dbn_mix,rho=50,quick,seed=3", method="erm", rho=100.0,
                          seed=0, quick=False)
  assert (args.method, args.rho, args.seed, args.quick) == ("dbn_mix", 50.0, 3, True)
  assert common.parse_arg("mixup", method="erm", rho=1.0).method == "mixup"
  assert common.parse_arg(None, method="erm").method == "erm"
  with pytest.raises(ValueError, match="valid arguments: method, rho"):
    common.parse_arg("colour=red", method="erm", rho=1.0)
  with pytest.raises(ValueError, match="rho must be float"):
    common.parse_arg("rho=many", method="erm", rho=1.0)
  with pytest.raises(ValueError, match="quick must be a bool"):
    common.parse_arg("quick=maybe", quick=False)


def test_rescale_follows_the_registry_rule():
  cfg = protocols.get_protocol("mixup_drw")
  out = protocols.rescale(cfg, 100)
  assert out["num_epochs"] == 100 and out["schedule"]["milestones"] == (80, 90)
  assert out["recipe"]["drw_epoch"] == 80 and out["schedule"]["warmup_epochs"] == 2
  tiny = protocols.rescale(cfg, 3)
  assert tiny["schedule"]["milestones"] == (2,) and tiny["schedule"]["factors"] == (1e-4,)
  with pytest.raises(ValueError, match="epochs"):
    protocols.rescale(cfg, 0)


def test_paper_recipes_in_the_configs():
  dbn = _config("cifar10_lt", "method=dbn_mix")
  assert not dbn.optim.nesterov and dbn.schedule.milestones == (120, 160)
  assert dbn.schedule.factors == (0.1, 0.01) and (dbn.recipe.eta, dbn.recipe.eps) == (3.0, 0.6)
  dbn_code = _config("cifar10_lt", "method=dbn_mix,protocol=code")
  assert dbn_code.optim.nesterov and dbn_code.schedule.milestones == (160, 180)
  assert _config("cifar100_lt", "method=dbn_mix").recipe.eta == 7.0
  cp = _config("cifar10_lt", "method=cp_mix")
  assert (cp.num_epochs, cp.schedule.warmup_epochs, cp.schedule.milestones) == (300, 10,
                                                                               (260, 280))
  assert (cp.recipe.alpha, cp.recipe.t, cp.recipe.stage2_epoch) == (1.5, 0.5, 200)
  assert (cp.finetune.num_epochs, cp.finetune.lr, cp.finetune.weight_decay) == (30, 0.1, 0.0)
  assert _config("cifar100_lt", "method=cp_mix").finetune.lr == 0.5
  ot = _config("cifar10_lt", "method=otmix_drw")
  assert (ot.num_epochs, ot.schedule.milestones, ot.recipe.drw_epoch) == (240, (100, 160, 200),
                                                                         160)
  assert ot.schedule.factors == (0.1, 0.01, 1e-4)
  mamix = _config("cifar10_lt", "method=mamix_drw,rho=10")
  assert (mamix.schedule.warmup_epochs, mamix.schedule.factors) == (5, (0.01, 1e-4))
  assert mamix.dataset.rho == 10.0 and mamix.recipe.omega == 0.25
  assert _config("cifar10_lt", "method=lobm_star").recipe.defer_epoch == 160
  half = _config("cifar10_lt", "method=lobm_star,epochs=100")
  assert half.recipe.defer_epoch == 80 and half.schedule.milestones == (80, 90)
  quick = _config("cifar10_lt", "method=cp_mix,quick")
  assert quick.model.name == "small_cnn" and quick.num_epochs == 4
  assert quick.finetune.num_epochs == 1
  assert _config("inat2018", "method=dbn_mix").recipe.eps == 0.02


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_builds_every_seed_method(name):
  for method in common.SEED_METHODS:
    config = _config(name, f"method={method}")
    runner.validate_names(config)
    rcp = runner.build_recipe(config)
    assert rcp.name == method
    if "alpha" in config.recipe:
      assert rcp.alpha == config.recipe.alpha


def test_setup_errors_list_valid_names():
  config = _config("digits_lt", "method=erm")
  with config.unlocked():
    config.dataset.name = "mnist_lt"
  with pytest.raises(ValueError, match="valid datasets: .*digits_lt"):
    runner.validate_names(config)
  config = _config("digits_lt", "method=erm")
  with config.unlocked():
    config.model.name = "vgg"
  with pytest.raises(ValueError, match="valid models: .*small_cnn"):
    runner.validate_names(config)
  config = _config("digits_lt", "method=dbn_mix")
  with config.unlocked():
    config.model.name = "mlp"  # no dual-branch MLP: DBN-Mix cannot train it
  with pytest.raises(ValueError, match="dual-branch"):
    runner.check_setup(config, 10, (8, 8, 1))
  with pytest.raises(ValueError, match="valid methods: erm"):
    compare.run_configs(f"{DIGITS}:quick", {}, ["erm", "bogus"], [0])
  with pytest.raises(ValueError, match="Pass data_dir= .*image_root="):  # no files here
    runner.load_dataset(_config("imagenet_lt", "method=erm"))


def test_compare_helpers():
  assert compare.with_args("quick,method=erm,seed=1", method="mixup", seed=2) == (
      "quick,method=mixup,seed=2")
  config = _config("digits_lt", "method=erm")
  skipped = compare.apply_overrides(config, {"optim.lr": 0.3, "recipe.alpha": 0.5,
                                             "schedule.milestones": [1, 2]})
  assert skipped == ["recipe.alpha"] and config.optim.lr == 0.3
  assert config.schedule.milestones == (1, 2)


# ----------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_quickstart_compare_end_to_end(tmp_path):
  workdir = str(tmp_path / "cmp")
  methods = ["erm", "mixup_drw", "dbn_mix"]
  proc = _python("experiments.compare", f"--config={DIGITS}:quick,epochs=2",
                 f"--methods={','.join(methods)}", "--seeds=0", f"--workdir={workdir}",
                 "--config.optim.lr=0.07", "--config.recipe.alpha=0.5")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  table = open(os.path.join(workdir, "comparison.md")).read()
  rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
  assert [r.split("|")[1].strip() for r in rows] == methods
  assert "| erm |" in proc.stdout  # the table is printed
  summary = reporting.read_json(os.path.join(workdir, "comparison.json"))
  assert set(summary["methods"]) == set(methods)
  for method in methods:
    run = os.path.join(workdir, method, "seed0")
    for name in RUN_FILES:
      assert os.path.getsize(os.path.join(run, name)) > 0, (method, name)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run))
    assert os.path.isdir(os.path.join(run, "checkpoints"))
    config = reporting.read_json(os.path.join(run, "config.json"))
    assert config["optim"]["lr"] == 0.07 and config["num_epochs"] == 2
    if method != "erm":
      assert config["recipe"]["alpha"] == 0.5
    results = reporting.read_json(os.path.join(run, "results.json"))
    assert results["extra"]["complete"] and len(results["per_class"]) == 10
    assert results["protocol"]["name"] == "paper" and results["protocol"]["reproduces"]
    assert {"top1", "many", "medium", "few"} <= set(results["final"])
    assert results["timing"]["wall_time_s"] > 0 and results["timing"]["epoch_time_s"] > 0
    assert _epochs(run) == [0, 1]
    row = reporting.read_metrics(run)[-1]
    assert {"train/loss", "train/lr", "eval/top1", "eval/few"} <= set(row)
    dataset = reporting.read_json(os.path.join(run, "dataset.json"))
    assert dataset["meta"]["seed"] == 0 and len(dataset["train_counts"]) == 10
    assert reporting.read_json(os.path.join(run, "env.json"))["jax"]
  assert os.path.exists(os.path.join(workdir, "mixup_drw", "seed0", "label_occurrence.png"))
  for name in ("temperatures.png", "label_occurrence.png"):
    assert os.path.exists(os.path.join(workdir, "dbn_mix", "seed0", name))
  dbn = reporting.read_json(os.path.join(workdir, "dbn_mix", "seed0", "config.json"))
  assert dbn["model"]["name"] == "dual_small_cnn"


@pytest.mark.slow
def test_train_resumes_without_duplicate_epochs_and_evaluate(tmp_path):
  workdir = str(tmp_path / "run")
  args = ["experiments.train", f"--config={DIGITS}:method=cp_mix,quick,epochs=3",
          "--config.checkpoint_every=1", "--config.eval_every=1", f"--workdir={workdir}"]
  first = _python(*args, "--stop_after=3")
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert "Resolved config" in first.stdout
  assert _epochs(workdir) == [0, 1, 2]
  # Simulate a kill after epoch 3 was logged but before its checkpoint was written.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
  second = _python(*args)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert "Resuming" in second.stdout
  assert _epochs(workdir) == [0, 1, 2, 3]  # 3 epochs + 1 fine-tuning epoch, no duplicate
  results = reporting.read_json(os.path.join(workdir, "results.json"))
  assert results["extra"]["complete"] and results["timing"]["resumed_from_epoch"] == 2
  assert os.path.exists(os.path.join(workdir, "cp_confusion_pairs.png"))
  evaluated = _python("experiments.evaluate", f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  report = reporting.read_json(os.path.join(workdir, "eval.json"))
  assert report["epoch"] == 4 and report["phase"] == 1
  assert report["top1"] == pytest.approx(results["final"]["top1"])
  # The rerun of the complete run trains nothing: its CP-Mix view reads the main phase's
  # confusion counts from the fine-tuning phase's checkpoint, and it keeps the timing of
  # the epochs trained by the two processes above.
  counts = results["extra"]["method_view"]["cp_confusion_counts"]
  assert sum(map(sum, counts)) > 0
  rerun = _python(*args)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  again = reporting.read_json(os.path.join(workdir, "results.json"))
  assert again["extra"]["method_view"]["cp_confusion_counts"] == counts
  assert again["timing"]["segments"] == results["timing"]["segments"]
  assert [s["epochs"] for s in again["timing"]["segments"]] == [3, 2]


@pytest.mark.slow
def test_bad_names_fail_before_training(tmp_path):
  workdir = str(tmp_path / "bad")
  proc = _python("experiments.train", f"--config={DIGITS}:method=bogus,quick",
                 f"--workdir={workdir}")
  assert proc.returncode != 0
  assert "Unknown method 'bogus'; valid methods: erm" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  proc = _python("experiments.train", f"--config={DIGITS}:colour=red", f"--workdir={workdir}")
  assert proc.returncode != 0 and "valid arguments: method" in proc.stderr
  proc = _python("experiments.train", f"--config={DIGITS}:method=erm",
                 "--config.optim.nonexistent=1", f"--workdir={workdir}")
  assert proc.returncode != 0
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
