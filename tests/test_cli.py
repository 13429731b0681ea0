"""User errors of the experiment scripts (experiments/cli.py): one line on stderr, exit 2.

Errors found in the config or the command line are checked in process where a function
raises them; the flag-parsing path, the data files and evaluate are checked on the real
command lines (subprocesses that stop before any training).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import cli, compare, runner
from experiments.configs import common
from experiments.evaluate import checkpoint_epoch
from ltjax import reporting
from ltjax.training.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments", "configs")
DIGITS = "experiments/configs/digits_lt.py"
CONFIG_FILES = ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "digits_lt", "imagenet_lt",
                "places_lt", "inat2018")


def _python(*args, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, timeout=600,
                        capture_output=True, text=True)


def _config(name, arg=None):
  return cli.load_config_module(os.path.join(CONFIGS, f"{name}.py")).get_config(arg)


def _one_line(proc):
  """The `<script>: error: ...` line of a user error (exit status 2, no traceback)."""
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
  assert len(errors) == 1, proc.stderr
  return errors[0]


# ------------------------------------------------------------------------- the wrapper

_SCRIPT = textwrap.dedent("""
    import errno, sys
    from experiments import cli
    def main(argv):
      if sys.argv[1:] == ["user"]:
        raise cli.UserError("first part\\n  second part")
      with cli.disk_full_errors("/runs/a"):
        raise RuntimeError("orbax save failed") from OSError(
            errno.ENOSPC, "No space left on device", "/runs/a/checkpoints/3")
    cli.run(main)
""")


def test_user_errors_are_one_line_with_exit_status_2():
  proc = _python("-c", _SCRIPT, "user")
  assert _one_line(proc).endswith("error: first part second part")


def test_a_full_disk_is_reported_by_its_path():
  line = _one_line(_python("-c", _SCRIPT, "disk"))
  assert "no space left on device while writing /runs/a/checkpoints/3" in line


def test_other_errors_keep_their_traceback():
  with pytest.raises(KeyError):
    with cli.disk_full_errors("/runs/a"):
      raise KeyError("a bug")
  proc = _python("-c", _SCRIPT.replace("raise cli.UserError", "raise KeyError"), "user")
  assert proc.returncode == 1 and "Traceback" in proc.stderr


# ------------------------------------------------------------------------ field errors

def test_unknown_field_messages_name_the_field_and_what_exists():
  erm = _config("digits_lt", "method=erm")
  message = cli.unknown_field_message(erm, "recipe.alpha")
  fields = ", ".join(sorted(erm.recipe.keys()))
  assert message == (f"config.recipe has no field 'alpha' for method erm; its fields: "
                     f"{fields}.")
  assert "(did you mean lr?)" in cli.unknown_field_message(erm, "optim.lrr")
  assert "(did you mean dataset?)" in cli.unknown_field_message(erm, "data.data_dir")
  assert "is a value, not a section" in cli.unknown_field_message(erm, "optim.lr.x")
  assert cli.unknown_field_message(erm, "dataset.data_dir") is None
  assert cli.unknown_field_message(_config("digits_lt", "method=mixup"),
                                   "recipe.alpha") is None


def test_train_reports_an_unknown_field_in_one_line(tmp_path):
  proc = _python("-m", "experiments.train", f"--config={DIGITS}:method=erm,quick",
                 "--config.recipe.alpha=0.5", f"--workdir={tmp_path}")
  assert ("config.recipe has no field 'alpha' for method erm; its fields: base_loss_factor, "
          "beta,") in _one_line(proc)
  assert os.listdir(tmp_path) == []


def test_resolved_config_is_printed_as_field_lines():
  text = cli.format_config(_config("digits_lt", "method=mixup_drw"))
  lines = text.splitlines()
  assert "  schedule.milestones = (80, 90)" in lines
  assert "  dataset.data_dir = None" in lines and "  optim.lr = 0.05" in lines
  assert "!!python" not in text


# ---------------------------------------------------------------------------- data_dir

@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_takes_a_data_dir(name):
  config = _config(name, "method=erm")
  assert config.dataset.data_dir is None
  config.dataset.data_dir = "/data/x"  # a typed (str) placeholder: flags can set it
  assert config.dataset.data_dir == "/data/x"
  with pytest.raises(TypeError):
    config.dataset.data_dir = 3


def test_train_passes_data_dir_to_the_loader(tmp_path):
  proc = _python("-m", "experiments.train",
                 "--config=experiments/configs/fashion_mnist_lt.py:method=erm,quick",
                 "--config.dataset.data_dir=/nonexistent/fmnist", f"--workdir={tmp_path}",
                 env={"LTJAX_CACHE_DIR": str(tmp_path / "cache"),
                      "LTJAX_DATA_DIR": str(tmp_path / "none")})
  line = _one_line(proc)
  assert "Fashion-MNIST" in line and "/nonexistent/fmnist" in line


def test_compare_passes_data_dir_through():
  configs = compare.run_configs(f"{DIGITS}:quick", {"dataset.data_dir": "/data/digits"},
                                ["erm", "mixup"], [0, 1], log=print)
  assert {c.dataset.data_dir for c in configs.values()} == {"/data/digits"}


# ------------------------------------------------------------------- compare overrides

def test_compare_rejects_an_override_no_method_has():
  with pytest.raises(cli.UserError, match=r"--config\.optim\.lrr exists for none of the "
                                          r"compared methods \(erm, mixup\): config\.optim "
                                          r"has no field 'lrr' \(did you mean lr\?\)"):
    compare.run_configs(f"{DIGITS}:quick", {"optim.lrr": 0.3}, ["erm", "mixup"], [0])


def test_compare_applies_an_override_where_it_exists_and_says_so_once():
  notes = []
  configs = compare.run_configs(f"{DIGITS}:quick", {"recipe.alpha": 0.5},
                                ["erm", "mixup", "dbn_mix"], [0, 1], log=notes.append)
  assert notes == ["--config.recipe.alpha is set for mixup, dbn_mix; erm has no such field."]
  assert configs[("mixup", 1)].recipe.alpha == 0.5
  assert configs[("dbn_mix", 0)].recipe.alpha == 0.5
  assert "alpha" not in configs[("erm", 0)].recipe


# --------------------------------------------------------------------- run-time checks

def test_epochs_below_one_and_collapsed_schedules_are_refused():
  for bad in ("0", "-3"):
    with pytest.raises(ValueError, match="epochs must be >= 1; omit it for the protocol"):
      _config("digits_lt", f"method=erm,epochs={bad}")
  # mixup_drw, 200 epochs: milestones 160, 180, DRW 160; epochs=1 puts them on epoch 0.
  with pytest.raises(ValueError, match=r"schedule\.milestones 160 \(of 200\) -> epoch 0.*"
                                       r"recipe\.drw_epoch 160.*epochs >= 2"):
    _config("cifar10_lt", "method=mixup_drw,epochs=1")
  # OTmix's first milestone is 100 of 240: two epochs put it on epoch 0.
  with pytest.raises(ValueError, match=r"milestones 100 \(of 240\) -> epoch 0.*>= 3"):
    _config("cifar10_lt", "method=otmix,epochs=2")


def test_merged_schedule_epochs_warn():
  # CP-Mix: stage 2 from 200, milestones 260 and 280 of 300; 3 epochs merge them on 2.
  with pytest.warns(common.ScheduleCollapseWarning,
                    match=r"recipe\.stage2_epoch 200 and schedule\.milestones 260 and "
                          r"schedule\.milestones 280 \(of 300\) -> epoch 2"):
    config = _config("cifar10_lt", "method=cp_mix,epochs=3")
  assert tuple(config.schedule.milestones) == (2,)


def test_a_warm_up_as_long_as_the_run_is_refused():
  config = _config("digits_lt", "method=erm")
  config.num_epochs, config.schedule.warmup_epochs = 5, 5
  with pytest.raises(cli.UserError, match="warmup_epochs=5 >= config.num_epochs=5"):
    runner.validate_names(config)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 100000, r"config\.batch_size=100000 is larger than the training set "
                           r"\(\d+ images\)"),
    ("eval_batch_size", 0, r"config\.eval_batch_size must be >= 1, got 0"),
])
def test_batch_errors_name_the_field(tmp_path, field, value, message):
  config = _config("digits_lt", "method=erm,quick")
  config[field] = value
  with pytest.raises(cli.UserError, match=message):
    runner.run(config, str(tmp_path / "run"))


@pytest.mark.parametrize("stop_after", [0, -1])
def test_stop_after_below_one_is_a_user_error(tmp_path, stop_after):
  with pytest.raises(cli.UserError, match="--stop_after must be >= 1"):
    runner.run(_config("digits_lt", "method=erm,quick"), str(tmp_path), stop_after=stop_after)


# ---------------------------------------------------------------------------- evaluate

def test_evaluate_without_checkpoints_says_how_to_train(tmp_path):
  reporting.write_json(str(tmp_path / "config.json"),
                       _config("digits_lt", "method=erm,quick").to_dict())
  os.makedirs(tmp_path / "checkpoints")
  line = _one_line(_python("-m", "experiments.evaluate", f"--workdir={tmp_path}"))
  assert f"no complete checkpoint in {tmp_path}/checkpoints: train" in line
  assert f"python -m experiments.train --config=... --workdir={tmp_path}" in line


def test_evaluate_lists_the_epochs_that_have_a_checkpoint(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=3)
  for epoch in (2, 4):
    ckpt.save(epoch, {"w": np.zeros(3, np.float32)}, phase=0, seed=0)
  with pytest.raises(cli.UserError, match="no complete checkpoint for epoch 3 in .*; epochs "
                                          "with one: 2, 4"):
    checkpoint_epoch(ckpt, str(tmp_path), 3)
  assert checkpoint_epoch(ckpt, str(tmp_path), None) == 4
  ckpt.close()


def test_distributed_coordinates_reach_jax_distributed(monkeypatch):
  import ml_collections  # pylint: disable=import-outside-toplevel

  from ltjax.training import sharding  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(sharding, "initialize_distributed", lambda **kw: calls.append(kw))
  single = ml_collections.ConfigDict({"jax_distributed": False})
  runner.maybe_initialize_distributed(single, None)
  assert not calls  # a one-process run never initialises
  coords = {"coordinator_address": "host0:1234", "num_processes": 2, "process_id": 1}
  runner.maybe_initialize_distributed(single, coords)
  runner.maybe_initialize_distributed(ml_collections.ConfigDict({"jax_distributed": True}),
                                      None)
  assert calls == [coords, {}]  # {}: JAX detects the cluster (SLURM, TPU pods)
