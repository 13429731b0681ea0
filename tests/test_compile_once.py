"""Nothing compiles twice: another seed, learning rate or recipe hyperparameter reuses the
executables of the first run (`loop.StepInputs`, the schedule in the optimiser state, and
the scripts' persistent compilation cache)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/configs/digits_lt.py:quick,epochs=2"


def _script(script: str, config: str, cache: pathlib.Path, workdir: pathlib.Path,
            *args: str) -> None:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  proc = subprocess.run(
      [sys.executable, "-m", script, f"--config={config}", f"--compilation_cache={cache}",
       f"--workdir={workdir}", "--config.plots=False", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _compare(cache: pathlib.Path, workdir: pathlib.Path, *args: str) -> None:
  _script("experiments.compare", CONFIG, cache, workdir, "--methods=mixup_drw", *args)


def _entries(cache: pathlib.Path) -> set[str]:
  return {p.name for p in cache.iterdir()} if cache.exists() else set()


@pytest.mark.slow
def test_other_seeds_rates_and_hyperparameters_compile_nothing(tmp_path):
  cache = tmp_path / "cache"
  _compare(cache, tmp_path / "first", "--seeds=0")
  first = _entries(cache)
  assert len(first) > 10  # the scripts cache every executable, however small
  # A new process; seeds 1 and 2 one after the other in it; another learning rate, mixup
  # alpha and DRW epoch: every executable must come from the cache.
  _compare(cache, tmp_path / "second", "--seeds=1,2", "--config.optim.lr=0.07",
           "--config.recipe.alpha=0.4", "--config.recipe.drw_epoch=1")
  assert _entries(cache) == first, sorted(_entries(cache) - first)


@pytest.mark.slow
def test_a_resumed_run_compiles_nothing_the_first_process_compiled(tmp_path):
  """The restored state is placed as the fresh one was (`Checkpointer.restore`), so the
  resumed epochs, evaluation included, run the first process's executables."""
  cache, workdir = tmp_path / "cache", tmp_path / "run"
  train = ("experiments.train", f"{CONFIG},method=mixup_drw", cache, workdir,
           "--config.checkpoint_every=1", "--config.eval_every=1")
  _script(*train, "--stop_after=1")
  first = _entries(cache)
  _script(*train)
  assert (workdir / "checkpoints" / "2").is_dir()  # the second process trained epoch 2
  assert _entries(cache) == first, sorted(_entries(cache) - first)


def test_the_cache_can_be_turned_off(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  code = ("import jax; from experiments import cli; cli.enable_compilation_cache('none');"
          "print(jax.config.jax_compilation_cache_dir)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.stdout.strip() in ("None", ""), proc.stdout


def test_recipes_keep_their_tree_when_lowered_ahead_of_time():
  """The traced fields are decided by the class: lowering rebuilds the recipe with
  placeholders in its leaves, and the compiled function must accept the recipe again."""
  import jax  # pylint: disable=import-outside-toplevel

  from ltjax import methods  # pylint: disable=import-outside-toplevel
  for name in methods.METHODS:
    rcp = methods.get_recipe(name, num_epochs=10)
    leaves = jax.tree.leaves(rcp)
    assert leaves and all(isinstance(v, (float, int)) for v in leaves), name
    compiled = jax.jit(lambda r: sum(jax.tree.leaves(r))).lower(rcp).compile()
    assert float(compiled(rcp)) == pytest.approx(sum(leaves)), name
