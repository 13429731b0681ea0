"""Tests of ltjax.training.checkpoint: round trip, retention, sidecar, atomic writes."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax.training.checkpoint import Checkpointer


def make_state(value: float) -> dict:
  return {"step": jnp.int32(value), "params": {"w": jnp.full((3, 2), value, jnp.float32)},
          "method_state": ()}


def test_round_trip_retention_and_sidecar(tmp_path):
  ckpt = Checkpointer(tmp_path, save_every=2, keep=2)
  assert ckpt.latest_epoch() is None
  for epoch in range(1, 7):
    ckpt.save(epoch, make_state(epoch), phase=0, seed=5,
              metrics={"top1": np.float32(0.5), "per_class": np.array([1.0, np.nan])})
  assert ckpt.all_epochs() == [4, 6]          # every 2nd epoch, last 2 kept
  assert ckpt.save(7, make_state(7), phase=1, seed=5, force=True)
  assert not ckpt.save(7, make_state(8), phase=1, seed=5, force=True)   # already there
  state, meta = ckpt.restore(make_state(0))
  np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 7.0))
  assert int(state["step"]) == 7 and meta["epoch"] == 7 and meta["phase"] == 1
  old, old_meta = ckpt.restore(make_state(0), epoch=6)
  assert float(old["params"]["w"][0, 0]) == 6.0 and old_meta["seed"] == 5
  assert old_meta["metrics"]["top1"] == 0.5 and np.isnan(old_meta["metrics"]["per_class"][1])
  with pytest.raises(FileNotFoundError, match="epoch 2"):
    ckpt.restore(make_state(0), epoch=2)
  ckpt.close()


def _keyed_state(value: float) -> dict:
  return {**make_state(value), "key": jax.random.key(int(value))}


def _step(state: dict) -> dict:
  return {**state, "params": {"w": state["params"]["w"] * 2.0},
          "key": jax.random.split(state["key"])[0]}


@pytest.mark.parametrize("partial", [False, True], ids=["epoch", "partial"])
def test_restored_state_lowers_to_the_fresh_states_program(tmp_path, partial):
  """A resumed run compiles nothing the fresh run compiled: restored arrays are left
  uncommitted where the template's are, so `jit` lowers them to the same program text
  (the persistent compilation cache's key), and committed where the template's are."""
  ckpt = Checkpointer(tmp_path)
  if partial:
    ckpt.save_partial(5, _keyed_state(3), epoch=1, epoch_step=2, phase=0, seed=0)
    restore = lambda template: ckpt.restore_partial(template, 5)
  else:
    ckpt.save(1, _keyed_state(3), phase=0, seed=0)
    restore = lambda template: ckpt.restore(template)[0]
  fresh = _keyed_state(0)
  restored = restore(fresh)
  assert not any(x.committed for x in jax.tree.leaves(restored))
  np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 2), 3.0))
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(jax.random.key(3)))
  step = jax.jit(_step)
  assert step.lower(restored).as_text() == step.lower(fresh).as_text()
  placed = jax.device_put(fresh, jax.devices()[0])
  assert all(x.committed for x in jax.tree.leaves(restore(placed)))
  ckpt.close()


def test_constructor_errors(tmp_path):
  with pytest.raises(ValueError, match="save_every"):
    Checkpointer(tmp_path, save_every=0)
  with pytest.raises(ValueError, match="keep"):
    Checkpointer(tmp_path, keep=0)


def test_partial_temporary_directory_is_ignored(tmp_path):
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, make_state(1), phase=0, seed=0)
  ckpt.close()
  ckpt_dir = tmp_path / "checkpoints"
  partial = ckpt_dir / "2.orbax-checkpoint-tmp-1700000000"
  shutil.copytree(ckpt_dir / "1", partial)      # a write that died before its rename
  (partial / "state" / "junk").write_bytes(b"\x00" * 10)
  reopened = Checkpointer(tmp_path)
  assert reopened.latest_epoch() == 1
  state, meta = reopened.restore(make_state(0))
  assert meta["epoch"] == 1 and float(state["params"]["w"][0, 0]) == 1.0
  assert not partial.exists()                   # cleaned up on open


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from ltjax.training.checkpoint import Checkpointer

    state = lambda v: {"step": jnp.int32(v), "params": {"w": jnp.full((3, 2), v, jnp.float32)},
                       "method_state": ()}
    ckpt = Checkpointer(sys.argv[1])
    ckpt.save(1, state(1), phase=0, seed=0)

    async def die(*args, **kwargs):   # the process dies after writing, before the rename
      os._exit(17)

    atomicity.AtomicRenameTemporaryPath.finalize = die
    ckpt.save(2, state(2), phase=0, seed=0)
""")


def test_process_killed_mid_save_leaves_previous_checkpoint(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 17, proc.stderr
  leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
  assert any(name.startswith("2.orbax-checkpoint-tmp") for name in leftovers), leftovers
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_epoch() == 1
  state, _ = ckpt.restore(make_state(0))
  np.testing.assert_array_equal(state["params"]["w"], np.ones((3, 2)))
